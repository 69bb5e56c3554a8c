"""The editing API: a Rig is one DFR plus a RigNet per control mode, loaded from a checkpoint directory.

    rig = load_rig("stylerig_engine/data/rig/synthetic")
    p = rig.fit(ws)                                     # the face's own parameters
    ws_hat = rig.edit(ws, "pose", target)               # one mode
    ws_hat = rig.edit_many(ws, {"pose": t1, "expression": t2, "illumination": t3})  # composed
    ws_hat = rig.edit(ws, "pose", target, corrections={})  # RigNet alone, without the reader's corrections
    ws_hat = rig.edit(ws, "expression", target, rest=p_rig)  # keys found against the rig's matched values

The edit is the live path: RigNet's edit, then, for the modes in LIVE_CORRECTIONS, a few corrections by DFR's own
reading of the result (corrected_edit with DFR as the sensor). DFR reads a latent in a millisecond, so the
corrections cost no image; a per-image fit as the sensor (fitting.closed_loop_edit_many) is the final-quality path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..params import CONTROL_MODES, ParamLayout
from .checkpoints import CheckpointError, load_network, read_generator
from .networks import DFR, RigNet

# The order in which several edits are composed: pose first (it moves the coarse layers that others read),
# then expression, then illumination, then colour and shape.
COMPOSITION_ORDER = ("pose", "expression", "illumination", "albedo", "identity")
SHIPPED_RIG = Path(__file__).resolve().parents[1] / "data" / "rig" / "synthetic"
# DFR's corrections of the live edit, per mode (docs/rig.md, item 10): RigNet's edit, then DFR reads it and the
# command is corrected by the miss it sees, and again. RigNet alone falls ~3° short of a head turn even as DFR reads
# it; two corrections take the shipped pose edit from 3.10° to 1.62° (true miss, 256 held-out faces) and a keyed
# pucker from 34 to 93 %. Illumination is not corrected: DFR reads light less exactly than RigNet reaches it (one
# correction: 0.75 -> 0.89 σ).
LIVE_CORRECTIONS: dict[str, int] = {"pose": 2, "expression": 2}
# The blocks of a mode the corrections touch (default: all of the mode's). Pose: rotation alone. DFR reads
# translation 0.40 σ off; correcting it too moved identity more (drift 0.104 against 0.099) and the head no closer
# (1.67° against 1.62°).
CORRECTED_BLOCKS: dict[str, tuple[str, ...]] = {"pose": ("rotation",)}
# Expression is corrected on the keys alone: the blendshapes the target moves from the face's own reading, weighted
# from 0 at a change of KEY_RAMP[0] to 1 at KEY_RAMP[1], and only while few are moved at once (full weight up to
# KEYS_CORRECTED[0] keyed entries, none from KEYS_CORRECTED[1]). Corrected everywhere, it chased DFR's misreadings
# of blendshapes nobody keyed, and a whole other face's expression (12-30 entries moved) drifted 0.127 -> 0.19-0.22 σ.
# Both ramps keep the edit continuous in the keys, so an animated key never pops. "Moves from" means from the rig's
# rest values when the caller knows them (the add-on sends what "Match rig to face" set, `rest`), else from DFR's
# reading of the face, which is what the default match sets.
KEY_RAMP = (0.05, 0.3)
KEYS_CORRECTED = (4.0, 8.0)
Reader = Callable[[torch.Tensor], torch.Tensor]  # latents (B, num_ws, w_dim) -> parameters (B, D)
Actuator = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]  # (ws, {mode: command}) -> ŵ


class LoopInterrupted(Exception):
    """corrected_edit was told to stop (should_stop() returned True) before it finished."""


@torch.no_grad()
def corrected_edit(actuate: Actuator, reader: Reader, layout: ParamLayout, ws: torch.Tensor,
                   targets: Mapping[str, torch.Tensor], *, iterations: int, gain: float | Mapping[str, float] = 1.0,
                   weights: Mapping[str, torch.Tensor] | None = None, keep_best: bool = True,
                   should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """ŵ whose reading shows each mode's target more exactly than one actuation: edit, read, correct the command by
    the miss in the controlled blocks, repeat.

    Keyword args:
      actuate: (ws, {mode: command}) -> ŵ; RigNets composed (Rig.edit_many).
      reader: ŵ -> parameters, the sensor: DFR (live corrections) or a per-image fit (fitting.ImageReader).
      layout: the parameter layout.
      ws: (B, num_ws, w_dim) latents to edit.
      targets: {mode: (B, D) or (D,) parameters}; each mode's RigNet reads only its own blocks.
      iterations: sensor readings; iterations=0 is one plain actuation.
      gain: fraction of the measured miss added to each mode's command each iteration, one for all modes or
        per mode ({mode: gain}; a mode without one, or with 0, is actuated but not corrected).
      weights: {mode: (B, D) in [0, 1]} how much of each entry's miss is corrected (default: all of the mode's
        blocks fully).
      keep_best: every face keeps the edit whose reading was closest to the corrected modes' targets (in prior
        standard deviations), so an iteration that overshoots never makes a face worse by the sensor's measure;
        the last reading then only chooses. False: each reading is followed by a correction and the last
        actuation is the result, which is continuous in the targets (no face jumps between two iterations' edits
        as a key is animated).
      should_stop: asked before every reading; when it returns True, LoopInterrupted is raised.
    One loop for all modes, not one loop per mode: a reading reads every block at once and it reads the composed
    edit, so when a later RigNet disturbs what an earlier one set (expression moving the head a little), that miss
    is measured and corrected too.
    """
    if not targets:
        raise ValueError("a corrected edit needs at least one mode's target")
    unknown = sorted(set(targets) - set(CONTROL_MODES))
    if unknown:
        raise KeyError(f"unknown control modes {unknown}")
    gains = {m: float(gain.get(m, 0.0) if isinstance(gain, Mapping) else gain) for m in targets}
    corrected = [m for m in targets if gains[m]]
    targets = {m: (t.expand(len(ws), -1) if t.ndim == 1 else t).to(ws) for m, t in targets.items()}
    commands = {m: t.clone() for m, t in targets.items()}
    best = current = actuate(ws, commands)
    if not corrected:
        return best
    weight = {}  # (B, D): how much of each entry's miss each corrected mode's command takes
    for m in corrected:
        block = torch.as_tensor(layout.mask(CONTROL_MODES[m]), dtype=ws.dtype, device=ws.device)
        weight[m] = block.expand(len(ws), -1) * (weights[m].to(ws) if weights and m in weights else 1.0)
    counted = torch.stack([weight[m] for m in corrected]).sum((0, 2)).clamp(min=1e-6)
    std = torch.as_tensor(layout.prior_std, dtype=ws.dtype, device=ws.device)
    best_miss = torch.full((len(ws),), float("inf"), device=ws.device)
    for i in range(iterations):
        if should_stop is not None and should_stop():
            raise LoopInterrupted(f"stopped after {i} of {iterations} readings")
        if i and keep_best:
            current = actuate(ws, commands)
        seen = reader(current)
        misses = {m: (targets[m] - seen) * weight[m] for m in corrected}
        for m in corrected:
            commands[m] += gains[m] * misses[m]
        if not keep_best:
            current = actuate(ws, commands)
            continue
        size = sum(((misses[m] / std) ** 2).sum(1) for m in corrected) / counted
        better = size < best_miss
        best = torch.where(better[:, None, None], current, best)
        best_miss = torch.where(better, size, best_miss)
    return best if keep_best else current


class Rig(torch.nn.Module):
    """DFR and one RigNet per mode. corrections: DFR's corrections of the live edit per mode (default
    LIVE_CORRECTIONS; {} edits with RigNet alone). The modes of one edit share one loop, with as many readings as
    the largest count among them."""

    def __init__(self, dfr: DFR, rignets: Mapping[str, RigNet], corrections: Mapping[str, int] | None = None):
        super().__init__()
        for mode, net in rignets.items():
            if net.mode != mode:
                raise ValueError(f"RigNet for {net.mode!r} registered as {mode!r}")
            if net.layout.names != dfr.layout.names or (net.num_ws, net.w_dim) != (dfr.num_ws, dfr.w_dim):
                raise ValueError(f"RigNet {mode!r} was trained for another parameter layout or latent size")
        self.dfr = dfr
        self.rignets = torch.nn.ModuleDict(dict(rignets))
        self.generator: dict | None = None  # identity of the generator it was trained for (checkpoints.py)
        self.corrections = dict(LIVE_CORRECTIONS if corrections is None else corrections)

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

    def edit(self, ws: torch.Tensor, mode: str, target: torch.Tensor, *,
             corrections: Mapping[str, int] | None = None, rest: torch.Tensor | None = None) -> torch.Tensor:
        """ŵ for one mode; target (B, D) or (D,) parameters of which only the mode's blocks are read.
        corrections, rest: as edit_many's."""
        return self.edit_many(ws, {mode: target}, corrections=corrections, rest=rest)

    def edit_many(self, ws: torch.Tensor, targets: Mapping[str, torch.Tensor], *,
                  corrections: Mapping[str, int] | None = None, rest: torch.Tensor | None = None) -> torch.Tensor:
        """Edits of several modes composed in COMPOSITION_ORDER, then DFR's corrections (corrected_edit).

        Keyword args:
          ws: (B, num_ws, w_dim) latents.
          targets: {mode: (B, D) or (D,) parameters}.
          corrections: DFR readings that correct each mode's command (default: the rig's; {}: RigNets alone).
          rest: (B, D) or (D,) the parameters the animator's rig shows unkeyed (what it was matched to); the
            expression keys are what the target moves from them (key_weights). Default: DFR's reading of ws.
        """
        unknown = set(targets) - set(CONTROL_MODES)
        if unknown:
            raise KeyError(f"unknown control modes {sorted(unknown)}")
        missing = [m for m in targets if m not in self.rignets]
        if missing:
            raise KeyError(f"no RigNet for mode {missing[0]!r}; loaded modes: {self.modes}")
        targets = {m: (t.expand(len(ws), -1) if t.ndim == 1 else t).to(ws) for m, t in targets.items()}
        corrections = self.corrections if corrections is None else corrections
        weights = {}
        for m in targets:
            if not corrections.get(m, 0):
                continue
            blocks = torch.as_tensor(self.layout.mask(CORRECTED_BLOCKS.get(m, CONTROL_MODES[m])), dtype=ws.dtype,
                                     device=ws.device)
            weights[m] = (blocks * self.key_weights(ws, targets[m], rest) if m == "expression"
                          else blocks.expand(len(ws), -1))
            if not weights[m].any():  # nothing keyed: RigNet's edit as it is, no readings spent on it
                del weights[m]
        if not weights:
            return self._compose(ws, targets)
        readings = max(corrections[m] for m in weights)
        return corrected_edit(self._compose, self.dfr, self.layout, ws, targets, iterations=readings,
                              gain=dict.fromkeys(weights, 1.0), weights=weights, keep_best=False)

    @torch.no_grad()
    def key_weights(self, ws: torch.Tensor, target: torch.Tensor, rest: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) how much of each expression entry the live edit corrects: the keys (KEY_RAMP, KEYS_CORRECTED),
        the entries `target` moves from `rest` ((B, D) or (D,); default: DFR's reading of ws, as the default
        "Match rig to face" sets the rig)."""
        own = self.dfr(ws) if rest is None else rest.to(ws).expand(len(ws), -1)
        change = target.to(own) - own  # (B, D)
        lo, hi = KEY_RAMP
        keyed = ((change.abs() - lo) / (hi - lo)).clamp(0, 1)
        few, many = KEYS_CORRECTED
        block = self.layout.slice("expression")
        count = keyed[:, block].sum(1, keepdim=True)
        return keyed * ((many - count) / (many - few)).clamp(0, 1)

    def _compose(self, ws: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """RigNets alone, in COMPOSITION_ORDER; targets (B, D) each."""
        for mode in COMPOSITION_ORDER:
            if mode in targets:
                ws = self.rignets[mode](ws, targets[mode])
        return ws


def load_rig(directory: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
             corrections: Mapping[str, int] | None = None) -> Rig:
    """A Rig from a directory with dfr.safetensors and rignet-<mode>.safetensors files (default: the shipped
    synthetic-world rig); corrections: Rig's."""
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
    rig = Rig(dfr, rignets, corrections).eval()
    rig.requires_grad_(False)
    rig.generator = read_generator(directory)
    return rig


def rig_summary(directory: str | os.PathLike) -> dict:
    """The evaluation JSON shipped beside a rig, if any."""
    path = Path(directory) / "evaluation.json"
    return json.loads(path.read_text()) if path.is_file() else {}
