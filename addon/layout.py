"""The engine's parameter layout as the add-on sees it (from `info()["layout"]`, i.e. ParamLayout.describe()).

Pure numpy: the engine's own ParamLayout lives in stylerig_engine.params (torch); this is the read-only,
self-describing copy the rig stores in the .blend file so that it can be read back without an engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

BLOCKS = ("identity", "albedo", "expression", "rotation", "translation", "illumination")
# The RigNet modes the rig drives by default (StyleRig's three); identity and albedo are opt-in.
DEFAULT_MODES = ("pose", "expression", "illumination")


@dataclass(frozen=True, eq=False)
class Layout:
    blocks: tuple[tuple[str, int, int], ...]  # (name, offset, size) in vector order
    names: tuple[str, ...]  # "block/entry", one per entry
    prior_mean: np.ndarray
    prior_std: np.ndarray
    expression_range: tuple[float, float] | None

    @classmethod
    def from_description(cls, d: Mapping[str, Any] | str) -> Layout:
        if isinstance(d, str):
            d = json.loads(d)
        assert not isinstance(d, str)
        rng = d.get("expression_range")
        layout = cls(blocks=tuple((b["name"], int(b["offset"]), int(b["size"])) for b in d["blocks"]),
                     names=tuple(d["names"]), prior_mean=np.asarray(d["prior_mean"], np.float64),
                     prior_std=np.asarray(d["prior_std"], np.float64),
                     expression_range=(float(rng[0]), float(rng[1])) if rng else None)
        missing = [b for b in BLOCKS if b not in layout.block_names]
        if missing:
            raise ValueError(f"parameter layout lacks block(s) {missing}")
        if layout.size("rotation") != 3 or layout.size("translation") != 3 or layout.size("illumination") != 27:
            raise ValueError("parameter layout: rotation and translation must have 3 entries, illumination 27")
        if not (len(layout.names) == len(layout.prior_mean) == len(layout.prior_std) == layout.dim):
            raise ValueError("parameter layout: names and priors must have one entry per parameter")
        return layout

    def describe(self) -> dict:
        return {"blocks": [{"name": n, "offset": o, "size": s} for n, o, s in self.blocks],
                "names": list(self.names), "prior_mean": [float(x) for x in self.prior_mean],
                "prior_std": [float(x) for x in self.prior_std],
                "expression_range": list(self.expression_range) if self.expression_range else None}

    def differences(self, engine: Layout) -> list[str]:
        """What differs from the engine's layout (`Layout.from_description(info["layout"])`): [] when a
        parameter vector of this (stored) layout means the same to the engine."""
        if self.blocks != engine.blocks:
            mine, theirs = {n: s for n, _, s in self.blocks}, {n: s for n, _, s in engine.blocks}
            out = [f"{name}: {mine.get(name, 0)} entries in the rig, {theirs.get(name, 0)} at the engine"
                   for name in dict.fromkeys([*mine, *theirs]) if mine.get(name) != theirs.get(name)]
            return out or ["the blocks are in another order"]
        return [f"entry {i}: {a!r} in the rig, {b!r} at the engine"
                for i, (a, b) in enumerate(zip(self.names, engine.names)) if a != b][:3]

    def dumps(self) -> str:
        return json.dumps(self.describe(), separators=(",", ":"))

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(n for n, _, _ in self.blocks)

    @property
    def dim(self) -> int:
        return sum(s for _, _, s in self.blocks)

    def slice(self, block: str) -> slice:
        for name, offset, size in self.blocks:
            if name == block:
                return slice(offset, offset + size)
        raise KeyError(f"unknown parameter block {block!r}")

    def size(self, block: str) -> int:
        s = self.slice(block)
        return s.stop - s.start

    def entries(self, block: str) -> list[str]:
        """The entry names of a block ("identity/003" -> "003")."""
        return [n.split("/", 1)[1] for n in self.names[self.slice(block)]]

    def neutral(self) -> np.ndarray:
        """The prior mean with every expression weight at 0 (a neutral face under the mean light)."""
        p = self.prior_mean.copy()
        p[self.slice("expression")] = 0.0
        return p

    def range(self, block: str, k: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
        """Slider limits of a block: the expression range for blendshape weights, else mean +- k std."""
        s = self.slice(block)
        if block == "expression" and self.expression_range is not None:
            lo, hi = self.expression_range
            return np.full(self.size(block), lo), np.full(self.size(block), hi)
        return self.prior_mean[s] - k * self.prior_std[s], self.prior_mean[s] + k * self.prior_std[s]

    def check(self, p) -> np.ndarray:
        a = np.asarray(p, np.float64).reshape(-1)
        if a.shape != (self.dim,):
            raise ValueError(f"parameter vector has {a.size} entries, the layout has {self.dim}")
        if not np.isfinite(a).all():
            raise ValueError("parameter vector contains NaN or inf")
        return a


def targets(p, modes) -> dict[str, np.ndarray]:
    """The engine's render targets for a rig parameter vector (D,) or sequence (N, D): the full vector for every
    mode in `modes` (each RigNet reads the blocks it controls)."""
    a = np.asarray(p, np.float32)
    return {m: a for m in modes}
