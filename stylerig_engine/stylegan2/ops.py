"""StyleGAN2's low-level ops in plain PyTorch: bias + activation, FIR filtering and resampling (upfirdn2d
semantics), resampling convolution and modulated convolution; NVIDIA keeps these in `torch_utils/ops/`.

The math follows NVIDIA's reference (non-CUDA-kernel) code paths operation by operation (docs/generator.md):

* ``bias_act``: add bias, leaky ReLU (slope 0.2), multiply by the gain ``sqrt(2)``, clamp to ``conv_clamp``;
* modulated convolution with demodulation, as one grouped convolution ("fused") or as scale-conv-scale;
* upsampling with the ``[1,3,3,1]`` FIR filter in ``upfirdn2d`` semantics (zero insertion, padding,
  convolution with the flipped filter, gain ``up**2``); a 3x3 convolution with ``up=2`` is a stride-2
  transposed convolution followed by the filter, exactly as NVIDIA's ``conv2d_resample``.

Every op has a plain reference implementation (``*_ref``); the faster variants beside them compute the same
function with fewer memory passes and are checked against the reference in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


# name -> (default slope alpha, default gain); NVIDIA's `bias_act.activation_funcs` for the ones we need.
ACTIVATIONS = {
    "linear": (0.0, 1.0),
    "relu": (0.0, math.sqrt(2.0)),
    "lrelu": (0.2, math.sqrt(2.0)),
}


# ----------------------------------------------------------------------------------------------------------
# Helpers


def assert_shape(tensor: torch.Tensor, shape: Sequence[int | None], name: str = "tensor") -> None:
    """Raise ValueError unless `tensor.shape` matches `shape` (None matches any size)."""
    if tensor.ndim != len(shape):
        raise ValueError(f"{name}: expected {len(shape)} dimensions {list(shape)}, got shape {list(tensor.shape)}")
    for got, want in zip(tensor.shape, shape):
        if want is not None and int(got) != int(want):
            raise ValueError(f"{name}: expected shape {list(shape)}, got {list(tensor.shape)}")


def _grad_free(*tensors: torch.Tensor) -> bool:
    """True when in-place updates of these tensors cannot disturb autograd."""
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------------------------------------
# Ops


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) along `dim` (the "pixel norm" applied to z)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act_ref(
    x: torch.Tensor,
    b: torch.Tensor | None = None,  # bias of shape [x.shape[dim]], or None
    act: str = "linear",            # 'linear', 'relu' or 'lrelu'
    alpha: float | None = None,     # leaky ReLU slope, None = default of `act` (0.2 for lrelu)
    gain: float | None = None,      # output scale, None = default of `act` (sqrt(2) for (l)relu)
    clamp: float | None = None,     # clamp the output to [-clamp, clamp], None = no clamping
    dim: int = 1,                   # the dimension of x that `b` runs along
) -> torch.Tensor:
    """Reference bias + activation + gain + clamp, one out-of-place op at a time (NVIDIA's `_bias_act_ref`)."""
    def_alpha, def_gain = ACTIVATIONS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    if b is not None:
        assert b.ndim == 1 and b.shape[0] == x.shape[dim]
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    elif act == "relu":
        x = F.relu(x)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,  # bias of shape [x.shape[dim]], or None
    act: str = "linear",            # 'linear', 'relu' or 'lrelu'
    alpha: float | None = None,     # leaky ReLU slope, None = default of `act`
    gain: float | None = None,      # output scale, None = default of `act`
    clamp: float | None = None,     # clamp the output to [-clamp, clamp], None = no clamping
    dim: int = 1,                   # the dimension of x that `b` runs along
) -> torch.Tensor:
    """Same function as `bias_act_ref`; works in place on `x` when autograd does not need it (x must be a
    fresh intermediate that nothing else reads), saving three memory passes per layer."""
    if not _grad_free(x) or (b is not None and not _grad_free(b)):
        return bias_act_ref(x, b, act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim)
    def_alpha, def_gain = ACTIVATIONS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    if b is not None:
        assert b.ndim == 1 and b.shape[0] == x.shape[dim]
        x = x.add_(b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]))
    if act == "lrelu":
        x = F.leaky_relu_(x, alpha)
    elif act == "relu":
        x = F.relu_(x)
    if gain != 1:
        x = x.mul_(gain)
    if clamp is not None and clamp >= 0:
        x = x.clamp_(-clamp, clamp)
    return x


def setup_filter(
    f: Sequence[float] | torch.Tensor,  # 1-D taps (made 2-D as an outer product) or a 2-D filter
    normalize: bool = True,             # scale so that the taps sum to 1 (keeps DC)
    flip_filter: bool = False,          # flip the filter
    gain: float = 1,                    # overall gain, spread as gain**(ndim/2)
) -> torch.Tensor:
    """A 2-D float32 FIR filter as NVIDIA's `upfirdn2d.setup_filter` makes it (for filters shorter than 8 taps,
    which it keeps non-separable): [1,3,3,1] becomes outer([1,3,3,1], [1,3,3,1]) / 64."""
    f = torch.as_tensor(f, dtype=torch.float32).clone()
    if f.ndim == 0:
        f = f[None]
    if f.ndim == 1:
        f = torch.outer(f, f)
    assert f.ndim == 2 and f.numel() > 0
    if normalize:
        f /= f.sum()
    if flip_filter:
        f = f.flip([0, 1])
    return f * (gain ** (f.ndim / 2))


def _parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    px0, px1, py0, py1 = padding
    return px0, px1, py0, py1


def upfirdn2d_ref(
    x: torch.Tensor,              # [N, C, H, W]
    f: torch.Tensor,              # 2-D float32 filter from `setup_filter`
    up: int = 1,                  # upsampling factor (zero insertion)
    down: int = 1,                # downsampling factor (keep every `down`-th pixel)
    padding: int | Sequence[int] = 0,  # [x0, x1, y0, y1] relative to the upsampled image; negative crops
    flip_filter: bool = False,    # False = convolution (the filter is flipped), True = correlation
    gain: float = 1,              # overall gain, spread as gain**(ndim/2)
) -> torch.Tensor:
    """Reference upsample / pad / FIR filter / downsample (NVIDIA's `_upfirdn2d_ref`), step by step."""
    assert x.ndim == 4 and f.ndim == 2 and f.dtype == torch.float32
    batch, channels, height, width = x.shape
    px0, px1, py0, py1 = _parse_padding(padding)
    # Upsample by inserting zeros.
    x = x.reshape([batch, channels, height, 1, width, 1])
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape([batch, channels, height * up, width * up])
    # Pad or crop.
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    # Filter (a true convolution unless flip_filter).
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip([0, 1])
    f = f[None, None].repeat([channels, 1, 1, 1])
    x = F.conv2d(x, f, groups=channels)
    # Downsample by throwing away pixels.
    return x[:, :, ::down, ::down]


def filter2d_padded(
    x: torch.Tensor,        # [N, C, H, W]
    f: torch.Tensor,        # 2-D float32 filter
    padding: int,           # equal zero padding on every side (>= 0)
    gain: float = 1,        # overall gain
    flip_filter: bool = False,
) -> torch.Tensor:
    """Fast path of `upfirdn2d_ref(x, f, up=1, padding=padding, gain=gain)`: the padding goes into the
    depthwise convolution instead of a separate padded copy."""
    channels = x.shape[1]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip([0, 1])
    f = f[None, None].expand([channels, 1, *f.shape]).contiguous(memory_format=_memory_format_of(x))
    return F.conv2d(x, f, padding=padding, groups=channels)


def upsample2d_ref(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """Upsample by `up` with FIR filter `f`, output size = input size * up (NVIDIA's `upsample2d`)."""
    fh, fw = f.shape
    padding = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d_ref(x, f, up=up, padding=padding, gain=up * up)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """Fast path of `upsample2d_ref`: zero insertion + padding + filter is one depthwise transposed
    convolution with stride `up` (no zero-stuffed intermediate image)."""
    fh, fw = f.shape
    p0 = (fw + up - 1) // 2
    if fh != fw or fw - 1 - p0 < 0:
        return upsample2d_ref(x, f, up)
    channels = x.shape[1]
    # conv_transpose2d(x, k, stride=up, padding=P)[o] = sum_i x[i] k[o + P - up*i]; the reference output is
    # sum_i x[i] f[fw - 1 - p0 + o - up*i], so k = f (no flip: the transposed conv already is a convolution)
    # and P = fw - 1 - p0. Output length (H-1)*up - 2P + fw = H*up for the [1,3,3,1] filter.
    k = (f * (up * up)).to(x.dtype)
    k = k[None, None].expand([channels, 1, fh, fw]).contiguous(memory_format=_memory_format_of(x))
    pad = fw - 1 - p0
    out = F.conv_transpose2d(x, k, stride=up, padding=pad, groups=channels)
    extra = out.shape[-1] - x.shape[-1] * up
    if extra:  # other filter lengths: crop the surplus on the far side, as the reference's padding does
        out = out[:, :, : x.shape[-2] * up, : x.shape[-1] * up]
    return out


def _memory_format_of(x: torch.Tensor) -> torch.memory_format:
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def conv2d_resample(
    x: torch.Tensor,                 # [N, C_in, H, W]
    w: torch.Tensor,                 # [C_out, C_in // groups, kh, kw]
    f: torch.Tensor | None = None,   # 2-D FIR filter for up > 1
    up: int = 1,                     # 1 or 2
    padding: int = 0,                # padding relative to the upsampled image
    groups: int = 1,                 # grouped convolution (one group per sample for the fused modconv)
    flip_weight: bool = True,        # True = correlation (F.conv2d), False = convolution
    fast: bool = True,               # use the fused filter op instead of the step-by-step reference
) -> torch.Tensor:
    """2-D convolution with optional 2x upsampling, as NVIDIA's `conv2d_resample` for down = 1.

    up = 1: one F.conv2d. up = 2: a stride-2 transposed convolution, then the FIR filter with gain 4 and the
    padding that makes the output exactly twice the input size.
    """
    assert x.ndim == 4 and w.ndim == 4 and w.dtype == x.dtype
    out_channels, in_per_group, kh, kw = (int(s) for s in w.shape)
    if up == 1:
        if not flip_weight:
            w = w.flip([2, 3])
        return F.conv2d(x, w, padding=padding, groups=groups)
    assert up > 1 and f is not None
    fh, fw = (int(s) for s in f.shape)
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fh + up - 1) // 2 - (kh - 1)
    py1 = padding + (fh - up) // 2 - (kh - up)
    if groups == 1:
        w = w.transpose(0, 1)
    else:
        w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    # The transposed convolution is itself a convolution, so NVIDIA flips the weight iff flip_weight.
    if flip_weight:
        w = w.flip([2, 3])
    x = F.conv_transpose2d(x, w, stride=up, padding=[pyt, pxt], groups=groups)
    pad = [px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt]
    if fast and len(set(pad)) == 1 and pad[0] >= 0:
        return filter2d_padded(x, f, padding=pad[0], gain=up * up)
    return upfirdn2d_ref(x, f, padding=pad, gain=up * up)


def modulated_conv2d(
    x: torch.Tensor,                       # [N, C_in, H, W]
    weight: torch.Tensor,                  # [C_out, C_in, kh, kw]
    styles: torch.Tensor,                  # [N, C_in] modulation coefficients
    noise: torch.Tensor | None = None,     # added to the output (broadcast to [N, C_out, H', W']), or None
    up: int = 1,                           # 1 or 2
    padding: int = 0,                      # padding relative to the upsampled image
    resample_filter: torch.Tensor | None = None,  # FIR filter for up = 2
    demodulate: bool = True,               # normalise each output channel's weights to unit norm
    flip_weight: bool = True,              # True = correlation, False = convolution
    fused_modconv: bool = True,            # True = one grouped conv with per-sample weights; False = scale,
                                           # shared conv, scale (faster for larger batches on some devices)
    fast: bool = True,                     # fast filter op in conv2d_resample
) -> torch.Tensor:
    """StyleGAN2's modulated convolution (NVIDIA's `modulated_conv2d`, same order of operations)."""
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    assert_shape(weight, [out_channels, in_channels, kh, kw], "weight")
    assert_shape(x, [batch, in_channels, None, None], "x")
    assert_shape(styles, [batch, in_channels], "styles")

    # Pre-normalize inputs to avoid float16 overflow (changes nothing after demodulation).
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (
            1 / math.sqrt(in_channels * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        )
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    # Per-sample weights and demodulation coefficients.
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # [N, O, I, k, k]
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # [N, O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding,
                            flip_weight=flip_weight, fast=fast)
        if dcoefs is not None and noise is not None:
            x = torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch, -1, 1, 1))
        elif dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        elif noise is not None:
            x = x.add_(noise.to(x.dtype))
        return x

    if dcoefs is not None:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, padding=padding, groups=batch,
                        flip_weight=flip_weight, fast=fast)
    x = x.reshape(batch, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise)
    return x


def auto_fused_modconv(batch: int, resolution: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Which form of the modulated conv to use (both compute the same function).

    CUDA: NVIDIA's rule, grouped unless float16 with batch > 1. CPU: grouped at batch 1 and from 64 px up;
    scale-conv-scale for larger batches below 64 px, where one shared conv over many channels beats N
    small grouped ones (measured per layer at batch 16, single thread: 16 px 0.43 s vs 0.61 s grouped;
    1024 px 13.3 s vs 9.2 s grouped; see docs/benchmarks.md).
    """
    if device.type == "cpu":
        return batch == 1 or resolution >= 64
    return dtype == torch.float32 or batch == 1
