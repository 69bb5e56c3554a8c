"""StyleGAN2 generator (config F, skip architecture) in plain PyTorch.

The whole generator is in this file: a handful of ops, then small modules from the bottom up
(FullyConnectedLayer -> MappingNetwork; SynthesisLayer, ToRGBLayer -> SynthesisBlock -> SynthesisNetwork),
then `Generator`. Parameter and buffer names are NVIDIA's (stylegan2-ada-pytorch `training/networks.py`,
stylegan3 `training/networks_stylegan2.py`), so an NVIDIA state dict loads 1:1 with `load_state_dict`:
``mapping.fc0.weight``, ``mapping.w_avg``, ``synthesis.b4.const``, ``synthesis.b8.conv0.affine.weight``,
``...resample_filter``, ``...noise_const``, ``...noise_strength``, ``...torgb.weight``.

The math follows NVIDIA's reference (non-CUDA-kernel) code paths operation by operation, so on the same
device the plain fp32 path reproduces NVIDIA's outputs to float rounding (see docs/generator.md):

* equalized learning rate: weights are stored unscaled and multiplied by ``lr_multiplier / sqrt(fan_in)``
  at run time; the mapping network uses ``lr_multiplier = 0.01``;
* ``bias_act``: add bias, leaky ReLU (slope 0.2), multiply by the gain ``sqrt(2)``, clamp to ``conv_clamp``;
* modulated convolution with demodulation, as one grouped convolution ("fused") or as scale-conv-scale;
* upsampling with the ``[1,3,3,1]`` FIR filter in ``upfirdn2d`` semantics (zero insertion, padding,
  convolution with the flipped filter, gain ``up**2``); a 3x3 convolution with ``up=2`` is a stride-2
  transposed convolution followed by the filter, exactly as NVIDIA's ``conv2d_resample``;
* skip architecture: every block has a ToRGB whose output is added to the upsampled image of the block before.

Every op has a plain reference implementation (``*_ref``); the faster variants beside them compute the same
function with fewer memory passes and are checked against the reference in the tests.

Images are NCHW float32 in [-1, 1] (not clamped, like NVIDIA's). Shapes are asserted at module boundaries.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

NOISE_MODES = ("const", "random", "none")

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
    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding,
                            flip_weight=flip_weight, fast=fast)
        if demodulate and noise is not None:
            x = torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch, -1, 1, 1))
        elif demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        elif noise is not None:
            x = x.add_(noise.to(x.dtype))
        return x

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


# ----------------------------------------------------------------------------------------------------------
# Mapping network


class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalized learning rate: y = act(x @ (W * lr/sqrt(in)).T + b * lr)."""

    def __init__(
        self,
        in_features: int,            # input width
        out_features: int,           # output width
        bias: bool = True,           # learn an additive bias
        activation: str = "linear",  # 'linear', 'relu' or 'lrelu'
        lr_multiplier: float = 1,    # learning-rate multiplier (weights are stored divided by it)
        bias_init: float = 0,        # initial bias value (1 for the style affines)
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.in_features], "FullyConnectedLayer input")
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class MappingNetwork(torch.nn.Module):
    """z (and optional label c) -> w: normalize z, `num_layers` equalized-lr dense layers, broadcast to
    `num_ws` copies, truncation towards the tracked average `w_avg`."""

    def __init__(
        self,
        z_dim: int,                        # input latent (Z) size, 0 = no latent
        c_dim: int,                        # conditioning label size, 0 = unconditional
        w_dim: int,                        # intermediate latent (W) size
        num_ws: int | None,                # number of ws to broadcast to, None = return [N, w_dim]
        num_layers: int = 8,               # number of dense layers
        embed_features: int | None = None,  # label embedding size, None = w_dim
        layer_features: int | None = None,  # hidden width, None = w_dim
        activation: str = "lrelu",         # activation of every layer
        lr_multiplier: float = 0.01,       # learning-rate multiplier of every layer
        w_avg_beta: float | None = 0.995,  # decay of the w average (a training detail; kept for the config)
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor,                 # [N, z_dim]
        c: torch.Tensor | None = None,   # [N, c_dim] labels (conditional networks only)
        psi: float = 1.0,                # truncation: w_avg + psi * (w - w_avg); 1 = none
        cutoff: int | None = None,       # truncate only the first `cutoff` ws, None = all
    ) -> torch.Tensor:                   # [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None)
        x = None
        if self.z_dim > 0:
            assert_shape(z, [None, self.z_dim], "z")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional: pass c of shape [N, {self.c_dim}]")
            assert_shape(c, [None, self.c_dim], "c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if psi != 1:
            if self.num_ws is None or cutoff is None:
                x = self.w_avg.lerp(x, psi)
            else:
                x = torch.cat([self.w_avg.lerp(x[:, :cutoff], psi), x[:, cutoff:]], dim=1)
        return x


# ----------------------------------------------------------------------------------------------------------
# Synthesis network


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling) + noise + bias + leaky ReLU."""

    def __init__(
        self,
        in_channels: int,            # input channels
        out_channels: int,           # output channels
        w_dim: int,                  # W size (input of the style affine)
        resolution: int,             # output resolution of this layer
        kernel_size: int = 3,        # convolution kernel size
        up: int = 1,                 # 1, or 2 for the first layer of a block
        use_noise: bool = True,      # add per-pixel noise
        activation: str = "lrelu",   # activation
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR filter for upsampling
        conv_clamp: float | None = None,  # clamp activations to +-conv_clamp, None = off
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATIONS[activation][1]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: torch.Tensor,             # [N, in_channels, resolution // up, resolution // up]
        w: torch.Tensor,             # [N, w_dim]
        noise_mode: str = "const",   # 'const' (the stored noise), 'random' (fresh N(0,1)) or 'none'
        fused_modconv: bool = True,  # see `modulated_conv2d`
        gain: float = 1,             # extra output gain
        fast: bool = True,           # fast op variants (same function)
    ) -> torch.Tensor:               # [N, out_channels, resolution, resolution]
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        in_resolution = self.resolution // self.up
        assert_shape(x, [None, self.in_channels, in_resolution, in_resolution], "SynthesisLayer input")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        flip_weight = self.up == 1
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=flip_weight,
                             fused_modconv=fused_modconv, fast=fast)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        op = bias_act if fast else bias_act_ref
        return op(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}")


class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 convolution to RGB without demodulation, + bias (+ clamp)."""

    def __init__(
        self,
        in_channels: int,                 # feature channels
        out_channels: int,                # image channels
        w_dim: int,                       # W size
        kernel_size: int = 1,             # kernel size
        conv_clamp: float | None = None,  # clamp to +-conv_clamp, None = off
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True, fast: bool = True):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv, fast=fast)
        op = bias_act if fast else bias_act_ref
        return op(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


class SynthesisBlock(torch.nn.Module):
    """One resolution of the skip generator: [const | conv0 (up 2)], conv1, torgb; image skip connection."""

    def __init__(
        self,
        in_channels: int,                 # input channels, 0 = the first (4x4, constant input) block
        out_channels: int,                # output channels
        w_dim: int,                       # W size
        resolution: int,                  # resolution of this block
        img_channels: int,                # image channels
        is_last: bool,                    # the block at the output resolution
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR filter for upsampling
        conv_clamp: float | None = None,  # clamp activations to +-conv_clamp, None = off
        use_fp16: bool = False,           # this block may run in float16 (see SynthesisNetwork.fp16)
        **layer_kwargs: Any,              # more SynthesisLayer arguments (use_noise, activation, kernel_size)
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.use_fp16 = use_fp16
        self.channels_last = False  # set by the inference options
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    def forward(
        self,
        x: torch.Tensor | None,       # [N, in_channels, res/2, res/2] features, None for the first block
        img: torch.Tensor | None,     # [N, img_channels, res/2, res/2] image so far, None for the first block
        ws: torch.Tensor,             # [N, num_conv + num_torgb, w_dim]
        noise_mode: str = "const",
        fused_modconv: bool | None = None,  # None = `auto_fused_modconv`
        force_fp32: bool = True,      # run this block in float32 even if use_fp16
        fast: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], "block ws")
        w_iter = iter(ws.unbind(dim=1))
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if fused_modconv is None:
            fused_modconv = auto_fused_modconv(int(ws.shape[0]), self.resolution, dtype, ws.device)
        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.contiguous(memory_format=memory_format)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv, fast=fast)
        else:
            assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2], "block x")
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv, fast=fast)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv, fast=fast)
        if img is not None:
            assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2], "block img")
            img = upsample2d(img, self.resample_filter) if fast else upsample2d_ref(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv, fast=fast)
        y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        img = img.add_(y) if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, use_fp16={self.use_fp16}"


class SynthesisNetwork(torch.nn.Module):
    """W+ [N, num_ws, w_dim] -> image [N, img_channels, img_resolution, img_resolution] in [-1, 1]."""

    def __init__(
        self,
        w_dim: int,                 # W size
        img_resolution: int,        # output resolution, a power of two >= 4
        img_channels: int,          # image channels
        channel_base: int = 32768,  # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,     # maximum channels
        num_fp16_res: int = 0,      # the N highest resolutions may run in float16 (min 8x8)
        **block_kwargs: Any,        # SynthesisBlock arguments (conv_clamp, resample_filter, use_noise, ...)
    ):
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        # Inference switches (not part of the architecture): float16 in the use_fp16 blocks (CUDA only);
        # fused_modconv None = per-block rule; fast = fused op variants instead of the step-by-step ones.
        self.fp16 = False
        self.fused_modconv: bool | None = None
        self.fast = True
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=res == img_resolution,
                                   use_fp16=res >= fp16_resolution, **block_kwargs)
            self.num_ws += block.num_conv
            if res == img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def forward(
        self,
        ws: torch.Tensor,                  # [N, num_ws, w_dim]
        noise_mode: str = "const",         # 'const', 'random' or 'none'
        fused_modconv: bool | None = None,  # None = self.fused_modconv (None = per-block rule)
        force_fp32: bool | None = None,    # None = float32 unless self.fp16 is set and ws is on CUDA
    ) -> torch.Tensor:                     # [N, img_channels, img_resolution, img_resolution]
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        assert_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        ws = ws.to(torch.float32)
        if force_fp32 is None:
            force_fp32 = not (self.fp16 and ws.is_cuda)
        if fused_modconv is None:
            fused_modconv = self.fused_modconv
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=fused_modconv,
                           force_fp32=force_fp32, fast=self.fast)
        return img


# ----------------------------------------------------------------------------------------------------------
# Generator


class Generator(torch.nn.Module):
    """StyleGAN2 generator: `mapping` (z -> W+) followed by `synthesis` (W+ -> image).

    ``G.mapping(z, c=None, psi=1.0, cutoff=None)`` -> ws [N, num_ws, w_dim];
    ``G.synthesis(ws, noise_mode='const')`` -> images [N, img_channels, R, R] in [-1, 1];
    ``G(z, psi=...)`` does both. ``G.config`` is the JSON-able constructor arguments
    (``Generator(**G.config)`` rebuilds the architecture).
    """

    def __init__(
        self,
        z_dim: int = 512,                               # Z size
        c_dim: int = 0,                                 # label size, 0 = unconditional
        w_dim: int = 512,                               # W size
        img_resolution: int = 1024,                     # output resolution
        img_channels: int = 3,                          # output channels
        mapping_kwargs: dict[str, Any] | None = None,   # MappingNetwork arguments (num_layers, ...)
        synthesis_kwargs: dict[str, Any] | None = None,  # SynthesisNetwork arguments (channel_base, ...)
    ):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = dict(synthesis_kwargs or {})
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self._config = copy.deepcopy({
            "z_dim": z_dim, "c_dim": c_dim, "w_dim": w_dim, "img_resolution": img_resolution,
            "img_channels": img_channels, "mapping_kwargs": mapping_kwargs, "synthesis_kwargs": synthesis_kwargs,
        })
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    @property
    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self._config)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def forward(
        self,
        z: torch.Tensor,                # [N, z_dim]
        c: torch.Tensor | None = None,  # [N, c_dim] for conditional networks
        psi: float = 1.0,               # truncation psi
        cutoff: int | None = None,      # truncation cutoff
        noise_mode: str = "const",      # 'const', 'random' or 'none'
        **synthesis_kwargs: Any,        # fused_modconv, force_fp32
    ) -> torch.Tensor:
        ws = self.mapping(z, c, psi=psi, cutoff=cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, **synthesis_kwargs)

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, "
                f"img_resolution={self.img_resolution}, img_channels={self.img_channels}")


def config_f(img_resolution: int = 1024, channel_base: int | None = None) -> dict[str, Any]:
    """Constructor arguments of NVIDIA's StyleGAN2 networks at `img_resolution`.

    z = w = 512, 8 mapping layers (lr 0.01), channel_max 512, fp16 in the 4 highest resolutions with
    conv_clamp 256 (the settings of NVIDIA's PyTorch StyleGAN2 configs and released FFHQ networks).
    channel_base follows NVIDIA's rule: 32768 (config F) at >= 512 pixels, 16384 (their paper256 config, also
    their 256x256 FFHQ network) below; pass `channel_base` to override.
    """
    if channel_base is None:
        channel_base = 32768 if img_resolution >= 512 else 16384
    return {
        "z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": img_resolution, "img_channels": 3,
        "mapping_kwargs": {"num_layers": 8},
        "synthesis_kwargs": {
            "channel_base": channel_base, "channel_max": 512, "num_fp16_res": 4, "conv_clamp": 256,
        },
    }
