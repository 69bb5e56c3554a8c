"""Animator-style edit targets for RigNet training: a face's own reading with a few controlled entries keyed.

The paper trains RigNet to move w towards another face's parameters F(v), whole blocks that change together. An
animator keys one or two controls on the face in front of them (a smile, a blink, the head turned), often to the
edge of what the world shows; such targets are rare among the paper's (a blendshape is past its 99th percentile in
1 % of faces). Trained on F(v) alone, the expression RigNet reached 22 % of a keyed smile and 10 % of a pucker even
in DFR's own reading (docs/rig.md), so part of each training batch is edits of the animator's kind. They have no
target image, so they train through the parameter terms and L_consist (losses.key_edit_loss).
"""

from __future__ import annotations

import torch

from ..params import CONTROL_MODES, ParamLayout

# The share of each batch keyed, per mode, when a run does not say (--key-edits): pose and expression are keyed a
# control at a time in the add-on; a light is moved as a whole (all 27 SH coefficients together), which the paper's
# edits towards another face's light already resemble.
DEFAULT_KEY_EDITS: dict[str, float] = {"pose": 0.5, "expression": 0.5}
MAX_KEYED_ENTRIES = 3  # entries keyed per target: one control, or a few together (a mirrored pair counts once)
MIRROR_PROBABILITY = 0.5  # a keyed entry with a left/right twin keys the twin to the same value (a smile, a blink)
RANGE_QUANTILE = 0.005  # keyed values span DFR's readings over the corpus from this quantile to 1 − it


def mirror_index(names: list[str]) -> list[int]:
    """For each name, the position of its left/right twin ("mouthSmile_L" <-> "mouthSmile_R"), else its own."""
    where = {n: i for i, n in enumerate(names)}
    twins = []
    for i, name in enumerate(names):
        for a, b in (("_L", "_R"), ("_R", "_L"), ("Left", "Right"), ("Right", "Left")):
            if name.endswith(a) and name[: -len(a)] + b in where:
                twins.append(where[name[: -len(a)] + b])
                break
        else:
            twins.append(i)
    return twins


class KeyEditSampler:
    """Targets that key 1..MAX_KEYED_ENTRIES of a mode's entries on each face's own reading.

    Keyword args:
      layout: the parameter layout.
      mode: control mode; its blocks (CONTROL_MODES) are the entries that may be keyed.
      readings: (N, D) DFR's readings of corpus latents; each keyed value is drawn uniformly from the range they
        span (RANGE_QUANTILE to 1 − RANGE_QUANTILE per entry), so keys reach the edges of what DFR reads.
    Uses torch's global random generator, so a seeded, resumed training run draws the same targets.
    """

    def __init__(self, layout: ParamLayout, mode: str, readings: torch.Tensor):
        if readings.ndim != 2 or readings.shape[1] != layout.dim or len(readings) < 2:
            raise ValueError(f"readings must be (N >= 2, {layout.dim}), got {tuple(readings.shape)}")
        self.layout = layout
        positions = torch.arange(layout.dim)
        self.entries = torch.cat([positions[layout.slice(b)] for b in CONTROL_MODES[mode]]).to(readings.device)
        controlled = readings[:, self.entries].float()
        self.low = torch.quantile(controlled, RANGE_QUANTILE, dim=0)
        self.high = torch.quantile(controlled, 1 - RANGE_QUANTILE, dim=0)
        names = [layout.names[int(i)].split("/")[-1] for i in self.entries]
        self.twin = torch.as_tensor(mirror_index(names), device=readings.device)

    def __call__(self, start: torch.Tensor) -> torch.Tensor:
        """(B, D) targets: `start` (each face's reading) with a few of the mode's entries keyed."""
        batch, count = len(start), len(self.entries)
        device = start.device
        keyed_count = torch.randint(1, min(MAX_KEYED_ENTRIES, count) + 1, (batch, 1), device=device)
        rank = torch.rand(batch, count, device=device).argsort(1).argsort(1)  # a random order of the entries
        keyed = rank < keyed_count
        low, high = self.low.to(start), self.high.to(start)
        values = low + (high - low) * torch.rand(batch, count, device=device, dtype=start.dtype)
        mirrored = (torch.rand(batch, 1, device=device) < MIRROR_PROBABILITY) & keyed[:, self.twin] & ~keyed
        current = start[:, self.entries]
        new = torch.where(keyed, values, torch.where(mirrored, values[:, self.twin], current))
        target = start.clone()
        target[:, self.entries] = new
        return self.layout.clamp(target)
