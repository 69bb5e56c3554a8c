"""The editing API: a Rig is one DFR plus a RigNet per control mode, loaded from a checkpoint directory.

    rig = load_rig("stylerig_engine/data/rig/synthetic")
    p = rig.fit(ws)                                     # the face's own parameters
    ws_hat = rig.edit(ws, "pose", target)               # one mode
    ws_hat = rig.edit_many(ws, {"pose": t1, "expression": t2, "illumination": t3})  # composed
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch

from ..params import CONTROL_MODES, ParamLayout
from .checkpoints import CheckpointError, load_network, read_generator
from .networks import DFR, RigNet

# The order in which several edits are composed: pose first (it moves the coarse layers that others read),
# then expression, then illumination, then colour and shape.
COMPOSITION_ORDER = ("pose", "expression", "illumination", "albedo", "identity")
SHIPPED_RIG = Path(__file__).resolve().parents[1] / "data" / "rig" / "synthetic"


class Rig(torch.nn.Module):
    def __init__(self, dfr: DFR, rignets: Mapping[str, RigNet]):
        super().__init__()
        for mode, net in rignets.items():
            if net.mode != mode:
                raise ValueError(f"RigNet for {net.mode!r} registered as {mode!r}")
            if net.layout.names != dfr.layout.names or (net.num_ws, net.w_dim) != (dfr.num_ws, dfr.w_dim):
                raise ValueError(f"RigNet {mode!r} was trained for another parameter layout or latent size")
        self.dfr = dfr
        self.rignets = torch.nn.ModuleDict(dict(rignets))
        self.generator: dict | None = None  # identity of the generator it was trained for (checkpoints.py)

    @property
    def layout(self) -> ParamLayout:
        return self.dfr.layout

    @property
    def modes(self) -> list[str]:
        return [m for m in COMPOSITION_ORDER if m in self.rignets]

    @torch.no_grad()
    def fit(self, ws: torch.Tensor) -> torch.Tensor:
        """ws (B, num_ws, w_dim) -> (B, D) estimated parameters (DFR)."""
        return self.dfr(ws)

    def edit(self, ws: torch.Tensor, mode: str, target: torch.Tensor) -> torch.Tensor:
        """ŵ for one mode; target (B, D) or (D,) parameters of which only the mode's blocks are read."""
        if mode not in self.rignets:
            raise KeyError(f"no RigNet for mode {mode!r}; loaded modes: {self.modes}")
        if target.ndim == 1:
            target = target.expand(ws.shape[0], -1)
        return self.rignets[mode](ws, target.to(ws))

    def edit_many(self, ws: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Compose edits of several modes in COMPOSITION_ORDER."""
        unknown = set(targets) - set(CONTROL_MODES)
        if unknown:
            raise KeyError(f"unknown control modes {sorted(unknown)}")
        for mode in COMPOSITION_ORDER:
            if mode in targets:
                ws = self.edit(ws, mode, targets[mode])
        return ws


def load_rig(directory: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Rig:
    """A Rig from a directory with dfr.safetensors and rignet-<mode>.safetensors files (default: the shipped
    synthetic-world rig)."""
    directory = Path(directory) if directory is not None else SHIPPED_RIG
    dfr_path = directory / "dfr.safetensors"
    if not dfr_path.is_file():
        raise CheckpointError(f"{directory}: no dfr.safetensors; train one with `stylerig train dfr` "
                              "or `stylerig train all`")
    dfr = load_network(dfr_path, device)
    if not isinstance(dfr, DFR):
        raise CheckpointError(f"{dfr_path} is not a DFR checkpoint")
    rignets = {}
    for path in sorted(directory.glob("rignet-*.safetensors")):
        if path.name.endswith(".state.safetensors"):
            continue
        net = load_network(path, device)
        if not isinstance(net, RigNet):
            raise CheckpointError(f"{path} is not a RigNet checkpoint")
        rignets[net.mode] = net
    rig = Rig(dfr, rignets).eval()
    rig.requires_grad_(False)
    rig.generator = read_generator(directory)
    return rig


def rig_summary(directory: str | os.PathLike) -> dict:
    """The evaluation JSON shipped beside a rig, if any."""
    path = Path(directory) / "evaluation.json"
    return json.loads(path.read_text()) if path.is_file() else {}
