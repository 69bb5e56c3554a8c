"""Convert rosinality/stylegan2-pytorch checkpoints (``.pt``) to our Generator.

A rosinality checkpoint is a ``torch.save`` dict with ``g_ema`` (the generator's state dict) and
``latent_avg`` (the W average), often also ``g``, ``d``, optimizer states and ``args``. It is read with
``torch.load(weights_only=True)`` (argparse.Namespace is allowed for ``args``); nothing in it is executed.

Name and layout mapping (rosinality -> NVIDIA/ours), for a generator of resolution R = 2**L:

==================================  =================================  ========================================
rosinality                          ours                               layout change
==================================  =================================  ========================================
``style.{i+1}.weight/bias``         ``mapping.fc{i}.weight/bias``      none (EqualLinear, lr_mul 0.01 = ours)
``latent_avg``                      ``mapping.w_avg``                  [1, w] or [w] -> [w]
``input.input``                     ``synthesis.b4.const``             [1, C, 4, 4] -> [C, 4, 4]
``conv1.*``                         ``synthesis.b4.conv1.*``           see the StyledConv rows
``to_rgb1.*``                       ``synthesis.b4.torgb.*``           see the ToRGB rows
``convs.{2k}.*`` / ``{2k+1}.*``     ``synthesis.b{8*2**k}.conv0/1.*``  StyledConv
``to_rgbs.{k}.*``                   ``synthesis.b{8*2**k}.torgb.*``    ToRGB
``noises.noise_{j}``                ``...conv*.noise_const``           [1, 1, r, r] -> [r, r]; j = layer index
StyledConv ``conv.weight``          ``weight``                         [1, O, I, k, k] -> [O, I, k, k]
StyledConv ``conv.modulation.*``    ``affine.*``                       none
StyledConv ``noise.weight``         ``noise_strength``                 [1] -> []
StyledConv ``activate.bias``        ``bias``                           none
ToRGB ``conv.weight``               ``torgb.weight``                   [1, 3, C, 1, 1] -> [3, C, 1, 1]
ToRGB ``bias``                      ``torgb.bias``                     [1, 3, 1, 1] -> [3]
``*.blur.kernel``, ``*.upsample.kernel``  ``...resample_filter``       kernel / up**2 (must be the same filter)
==================================  =================================  ========================================

Channels: rosinality's ``channel_multiplier`` m gives 512 channels up to 32x32 and 16384*m/r above, which is
NVIDIA's rule with ``channel_base = 16384 * m``, ``channel_max = 512`` (m = 2 is config F).

Outputs are the same function but not bit-identical to rosinality's own forward pass, for three reasons
(all float rounding: at most 1.3e-5 on random networks with outputs up to ±8, see docs/generator.md):
rosinality multiplies the conv weight by 1/sqrt(fan_in) before modulation and demodulation (NVIDIA does not;
the scale cancels in the demodulation except inside its 1e-8 epsilon); in ToRGB rosinality scales the weight,
NVIDIA the styles; and truncation is ``avg + psi * (w - avg)`` there, ``lerp`` here. Their CUDA ops (fused
leaky ReLU, upfirdn2d) compute the same function as the reference ops used here. There is no conv_clamp and
no fp16 in rosinality networks.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any

import torch

from .networks import Generator
from .ops import setup_filter


class RosinalityFormatError(ValueError):
    pass


def _load_checkpoint(path: str | os.PathLike) -> Any:
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is not None:
        with safe([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def is_rosinality_state(state: dict[str, Any]) -> bool:
    return "input.input" in state and "to_rgb1.conv.weight" in state


def rosinality_to_config_and_state(
    g_ema: dict[str, torch.Tensor],   # rosinality generator state dict
    latent_avg: torch.Tensor | None,  # W average ([1, w] or [w]); None = zeros (truncation then pulls to 0)
    lr_mlp: float = 0.01,             # rosinality's mapping lr multiplier (not stored in the state dict)
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our Generator config and NVIDIA-named state dict for a rosinality generator state dict."""
    if not is_rosinality_state(g_ema):
        raise RosinalityFormatError("not a rosinality stylegan2-pytorch generator state dict")
    src = dict(g_ema)
    n_mlp = len([k for k in src if re.fullmatch(r"style\.\d+\.weight", k)])
    num_rgbs = len([k for k in src if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
    resolution = 2 ** (num_rgbs + 2)
    style_dim = int(src["style.1.weight"].shape[1])
    z_dim = style_dim
    w_dim = int(src[f"style.{n_mlp}.weight"].shape[0])
    channels = {4: int(src["input.input"].shape[1])}
    for k in range(num_rgbs):
        channels[8 * 2**k] = int(src[f"convs.{2 * k}.conv.weight"].shape[1])
    # channel_base = 16384 * channel_multiplier: read it off the first resolution with fewer channels than
    # the maximum (networks of <= 32 pixels, or with a large multiplier, never have one: any base works).
    channel_max = channels[4]
    below = [res for res in sorted(channels) if channels[res] < channel_max]
    channel_base = channels[below[0]] * below[0] if below else max(32768, channel_max * resolution)
    cfg = {
        "z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "img_resolution": resolution, "img_channels": 3,
        "mapping_kwargs": {"num_layers": n_mlp, "lr_multiplier": float(lr_mlp)},
        "synthesis_kwargs": {"channel_base": int(channel_base), "channel_max": int(channel_max),
                             "num_fp16_res": 0, "conv_clamp": None},
    }

    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in src:
            raise RosinalityFormatError(f"rosinality state dict lacks {name}")
        used.add(name)
        return src[name].detach().to(torch.float32)

    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = take(f"style.{i + 1}.weight")
        out[f"mapping.fc{i}.bias"] = take(f"style.{i + 1}.bias")
    avg = torch.zeros([w_dim]) if latent_avg is None else latent_avg.detach().to(torch.float32).reshape(-1)
    out["mapping.w_avg"] = avg
    out["synthesis.b4.const"] = take("input.input")[0]

    filt = setup_filter([1, 3, 3, 1])

    def styled_conv(src_prefix: str, dst_prefix: str, noise_index: int) -> None:
        out[f"{dst_prefix}.weight"] = take(f"{src_prefix}.conv.weight")[0]
        out[f"{dst_prefix}.affine.weight"] = take(f"{src_prefix}.conv.modulation.weight")
        out[f"{dst_prefix}.affine.bias"] = take(f"{src_prefix}.conv.modulation.bias")
        out[f"{dst_prefix}.noise_strength"] = take(f"{src_prefix}.noise.weight").reshape([])
        out[f"{dst_prefix}.bias"] = take(f"{src_prefix}.activate.bias")
        out[f"{dst_prefix}.noise_const"] = take(f"noises.noise_{noise_index}")[0, 0]
        out[f"{dst_prefix}.resample_filter"] = filt.clone()
        if f"{src_prefix}.conv.blur.kernel" in src:
            out[f"{dst_prefix}.resample_filter"] = take(f"{src_prefix}.conv.blur.kernel") / 4

    def to_rgb(src_prefix: str, dst_prefix: str) -> None:
        out[f"{dst_prefix}.weight"] = take(f"{src_prefix}.conv.weight")[0]
        out[f"{dst_prefix}.affine.weight"] = take(f"{src_prefix}.conv.modulation.weight")
        out[f"{dst_prefix}.affine.bias"] = take(f"{src_prefix}.conv.modulation.bias")
        out[f"{dst_prefix}.bias"] = take(f"{src_prefix}.bias").reshape(-1)

    styled_conv("conv1", "synthesis.b4.conv1", 0)
    to_rgb("to_rgb1", "synthesis.b4.torgb")
    out["synthesis.b4.resample_filter"] = filt.clone()
    for k in range(num_rgbs):
        res = 8 * 2**k
        styled_conv(f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1)
        styled_conv(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2)
        to_rgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb")
        out[f"synthesis.b{res}.resample_filter"] = filt.clone()
        if f"to_rgbs.{k}.upsample.kernel" in src:
            out[f"synthesis.b{res}.resample_filter"] = take(f"to_rgbs.{k}.upsample.kernel") / 4
    leftover = sorted(set(src) - used)
    if leftover:
        raise RosinalityFormatError(f"unexpected entries in the rosinality state dict: {leftover[:8]}")
    for name, value in out.items():
        if name.endswith("resample_filter") and not torch.allclose(value, filt):
            raise RosinalityFormatError(f"{name}: only the [1,3,3,1] filter is supported")
    return cfg, out


def load_rosinality(path: str | os.PathLike, key: str = "g_ema") -> Generator:
    """Load a rosinality stylegan2-pytorch checkpoint as our Generator (weights_only=True)."""
    ckpt = _load_checkpoint(path)
    if not isinstance(ckpt, dict) or key not in ckpt:
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RosinalityFormatError(f"{path}: no {key!r} in the checkpoint ({keys})")
    lr_mlp = 0.01
    args = ckpt.get("args")
    if args is not None and getattr(args, "lr_mlp", None) is not None:
        lr_mlp = float(args.lr_mlp)
    cfg, state = rosinality_to_config_and_state(ckpt[key], ckpt.get("latent_avg"), lr_mlp=lr_mlp)
    G = Generator(**cfg)
    ours = G.state_dict()
    for name, value in state.items():
        if name not in ours or tuple(ours[name].shape) != tuple(value.shape):
            want = tuple(ours[name].shape) if name in ours else "absent"
            raise RosinalityFormatError(f"{name}: shape {tuple(value.shape)}, expected {want} for {cfg}")
    G.load_state_dict(state, strict=True)
    if not math.isfinite(float(state["mapping.w_avg"].abs().sum())):
        raise RosinalityFormatError("latent_avg is not finite")
    return G.eval().requires_grad_(False)
