"""StyleGAN2 generator (config F, skip architecture) in plain PyTorch.

The ops (bias_act, upfirdn2d resampling, modulated convolution) are in ops.py, as NVIDIA keeps them in a module
of their own; this file builds the modules from the bottom up (FullyConnectedLayer -> MappingNetwork;
SynthesisLayer, ToRGBLayer -> SynthesisBlock -> SynthesisNetwork), then `Generator`. Parameter and buffer names
are NVIDIA's (stylegan2-ada-pytorch `training/networks.py`, stylegan3 `training/networks_stylegan2.py`), so an
NVIDIA state dict loads 1:1 with `load_state_dict`: ``mapping.fc0.weight``, ``mapping.w_avg``,
``synthesis.b4.const``, ``synthesis.b8.conv0.affine.weight``, ``...resample_filter``, ``...noise_const``,
``...noise_strength``, ``...torgb.weight``.

The math follows NVIDIA's reference (non-CUDA-kernel) code paths operation by operation, so on the same
device the plain fp32 path reproduces NVIDIA's outputs to float rounding (see docs/generator.md):

* equalized learning rate: weights are stored unscaled and multiplied by ``lr_multiplier / sqrt(fan_in)``
  at run time; the mapping network uses ``lr_multiplier = 0.01``;
* the ops of ops.py (bias + activation, modulated convolution, FIR resampling), each checked against its
  plain reference implementation;
* skip architecture: every block has a ToRGB whose output is added to the upsampled image of the block before.

Images are NCHW float32 in [-1, 1] (not clamped, like NVIDIA's). Shapes are checked at module boundaries
(`assert_shape` raises ValueError, so the checks survive `python -O`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch

from .ops import (
    ACTIVATIONS,
    assert_shape,
    auto_fused_modconv,
    bias_act,
    bias_act_ref,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
    upsample2d_ref,
)

NOISE_MODES = ("const", "random", "none")

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
        b: torch.Tensor | None = self.bias
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

    w_avg: torch.Tensor  # buffer (declared for type checkers: nn.Module types attributes Tensor | Module)

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
        if x is None:
            raise ValueError("a mapping network needs z_dim > 0 or c_dim > 0")
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

    resample_filter: torch.Tensor  # buffers
    noise_const: torch.Tensor

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

    resample_filter: torch.Tensor  # buffer

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
            if x is None:
                raise ValueError(f"block x: the {self.resolution // 2}px features of the previous block are required")
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
        if img is None:
            raise ValueError("a synthesis network needs at least one block")
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
