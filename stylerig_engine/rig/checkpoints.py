"""Safetensors checkpoints of DFR and RigNets: weights + a JSON description in the metadata, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..fileio import atomic_write
from ..params import ParamLayout
from .networks import DFR, RigNet

FORMAT = "stylerig-rig-checkpoint"


class CheckpointError(ValueError):
    pass


def save_network(net: DFR | RigNet, path: str | os.PathLike, *, extra: dict | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
    """Write `net` (weights in `dtype`, buffers in float32) with everything needed to rebuild it."""
    if isinstance(net, DFR):
        desc = dict(kind="dfr", hidden=net.net[0].out_features, layer_code=net.layer_code)
    else:
        desc = dict(kind="rignet", mode=net.mode, layers=list(net.layers), latent_dim=net.encoder.weight.shape[-1],
                    hidden=net.decoder_hidden.weight.shape[-1])
    desc.update(format=FORMAT, num_ws=net.num_ws, w_dim=net.w_dim, layout=net.layout.describe(), extra=extra or {})
    params = {name for name, _ in net.named_parameters()}
    tensors = {k: (v.to(dtype) if k in params else v.float()).contiguous().cpu() for k, v in net.state_dict().items()}
    with atomic_write(path) as f:
        f.write(st_save(tensors, metadata={"stylerig": json.dumps(desc)}))


def read_description(path: str | os.PathLike) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from e
    if "stylerig" not in meta:
        raise CheckpointError(f"{path}: no stylerig description in the metadata; not a DFR/RigNet checkpoint")
    desc = json.loads(meta["stylerig"])
    if desc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {desc.get('format')!r}")
    return desc


def load_network(path: str | os.PathLike, device: str | torch.device = "cpu") -> DFR | RigNet:
    """Rebuild a DFR or RigNet from its checkpoint (float32)."""
    path = Path(path)
    desc = read_description(path)
    layout = ParamLayout.from_description(desc["layout"])
    if desc["kind"] == "dfr":
        net: DFR | RigNet = DFR(layout, num_ws=desc["num_ws"], w_dim=desc["w_dim"], hidden=desc["hidden"],
                               layer_code=desc.get("layer_code", 0))
    elif desc["kind"] == "rignet":
        net = RigNet(desc["mode"], layout, num_ws=desc["num_ws"], w_dim=desc["w_dim"], layers=tuple(desc["layers"]),
                     latent_dim=desc["latent_dim"], hidden=desc["hidden"])
    else:
        raise CheckpointError(f"{path}: unknown network kind {desc['kind']!r}")
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            tensors[k] = f.get_tensor(k).float()
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing tensors {missing}, unexpected {unexpected}")
    return net.to(device).eval()
