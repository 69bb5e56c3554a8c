"""Semantic parameters p of a morphable face: a named, documented layout with priors.

Blocks, in vector order:
  identity      K_id   shape coefficients, ~ N(0, 1)
  albedo        K_alb  albedo coefficients, ~ N(0, 1)
  expression    K_exp  expression weights (blendshape models: ARKit weights, 0 = neutral, 1 = full)
  rotation      3      (pitch, yaw, roll) in radians; R = Rz(roll) @ Ry(yaw) @ Rx(pitch) acting on column
                       vectors in the model frame (+X subject's left, +Y up, +Z out of the face). Positive
                       pitch tips the nose down, positive yaw turns the nose towards +X (the viewer's right),
                       positive roll tilts the head towards +X... i.e. counter-clockwise in the image.
  translation   3      centimetres, added after rotation, in the same frame
  illumination  27     9 second-order spherical-harmonics coefficients x RGB, stored coefficient-major
                       (L00_r, L00_g, L00_b, L1m1_r, ...). Shading is albedo * sum_k gamma_k H_k(n) with
                       H_k the irradiance SH basis scaled so that H_0 = 1: an "ambient only" light
                       (gamma_0 = a, others 0) gives colour = albedo * a. See render/shading.py.

Control modes: which blocks a RigNet controls.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch


def _is_tensor(x) -> bool:
    """Whether x is a torch tensor, without importing torch (numpy-only callers such as `stylerig --help`
    and the Blender side never pay for it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


BLOCKS = ("identity", "albedo", "expression", "rotation", "translation", "illumination")
CONTROL_MODES: dict[str, tuple[str, ...]] = {
    "pose": ("rotation", "translation"),
    "expression": ("expression",),
    "illumination": ("illumination",),
    "identity": ("identity",),
    "albedo": ("albedo",),
}
PAPER_MODES = ("pose", "expression", "illumination")
# The order in which several RigNet edits are composed, whatever order a request names them in: pose first (it
# moves the coarse layers the others read), then expression, then illumination, then colour and shape.
COMPOSITION_ORDER = ("pose", "expression", "illumination", "albedo", "identity")
SH_NAMES = ("L00", "L1m1", "L10", "L11", "L2m2", "L2m1", "L20", "L21", "L22")
ROTATION_NAMES = ("pitch", "yaw", "roll")


class ParamError(ValueError):
    pass


@dataclass(frozen=True)
class ParamLayout:
    """Where each named block lives in the flat parameter vector, with per-entry names and priors."""

    sizes: tuple[tuple[str, int], ...]
    names: tuple[str, ...]  # one per entry, "block/entry"
    prior_mean: np.ndarray  # (D,)
    prior_std: np.ndarray  # (D,)
    expression_range: tuple[float, float] | None = None  # blendshape weights are clamped to this

    @property
    def dim(self) -> int:
        return len(self.names)

    def offset(self, block: str) -> int:
        start = 0
        for name, size in self.sizes:
            if name == block:
                return start
            start += size
        raise ParamError(f"unknown parameter block {block!r}; blocks are {[n for n, _ in self.sizes]}")

    def size(self, block: str) -> int:
        return self.slice(block).stop - self.offset(block)

    def slice(self, block: str) -> slice:
        start = self.offset(block)  # raises ParamError for an unknown block
        return slice(start, start + dict(self.sizes)[block])

    def mask(self, blocks: Sequence[str]) -> np.ndarray:
        """(D,) bool, True on the entries of `blocks`."""
        m = np.zeros(self.dim, dtype=bool)
        for b in blocks:
            m[self.slice(b)] = True
        return m

    # ---- splitting and joining ---------------------------------------------------------------------
    def split(self, p):
        """(..., D) -> {block: (..., size)} for numpy arrays or torch tensors."""
        self.check(p)
        return {name: p[..., self.slice(name)] for name, _ in self.sizes}

    def join(self, blocks: Mapping[str, Any]):
        missing = [n for n, _ in self.sizes if n not in blocks]
        if missing:
            raise ParamError(f"missing parameter blocks {missing}")
        parts = [blocks[n] for n, _ in self.sizes]
        if _is_tensor(parts[0]):
            import torch

            return torch.cat(parts, dim=-1)
        return np.concatenate(parts, axis=-1)

    def replace(self, p, source, blocks: Sequence[str]):
        """p with the entries of `blocks` taken from `source` (same shape); differentiable for tensors."""
        self.check(p)
        self.check(source)
        m = self.mask(blocks)
        if _is_tensor(p):
            import torch

            mt = torch.as_tensor(m, device=p.device)
            return torch.where(mt, source, p)
        return np.where(m, source, p)

    def check(self, p) -> None:
        if p.shape[-1] != self.dim:
            raise ParamError(f"parameter vector has {p.shape[-1]} entries, layout expects {self.dim}")

    # ---- priors ------------------------------------------------------------------------------------
    def sample(self, n: int, generator: np.random.Generator, scale: float = 1.0) -> np.ndarray:
        """(n, D) draws from the prior (Gaussian; blendshape weights clamped to their range)."""
        p = self.prior_mean + scale * self.prior_std * generator.standard_normal((n, self.dim))
        return self.clamp(p).astype(np.float32)

    def clamp(self, p):
        if self.expression_range is None:
            return p
        s = self.slice("expression")
        lo, hi = self.expression_range
        if _is_tensor(p):
            p = p.clone()
            p[..., s] = p[..., s].clamp(lo, hi)
        else:
            p = np.array(p, copy=True)
            p[..., s] = np.clip(p[..., s], lo, hi)
        return p

    def normalise(self, p):
        """(p - mean) / std: errors in units of prior standard deviations."""
        mean, std = self.prior_mean, self.prior_std
        if _is_tensor(p):
            import torch

            mean, std = (torch.as_tensor(a, dtype=p.dtype, device=p.device) for a in (mean, std))
        return (p - mean) / std

    # ---- JSON --------------------------------------------------------------------------------------
    def to_dict(self, p) -> dict[str, dict[str, float]]:
        """One parameter vector -> {block: {entry: value}}, the named JSON form."""
        p = np.asarray(p, dtype=np.float64).reshape(-1)
        self.check(p)
        out: dict[str, dict[str, float]] = {}
        for i, full in enumerate(self.names):
            block, entry = full.split("/", 1)
            out.setdefault(block, {})[entry] = float(p[i])
        return out

    def from_dict(self, d: Mapping[str, Mapping[str, float]], *, default=None) -> np.ndarray:
        """Inverse of to_dict. Entries left out take `default` (a vector) or the prior mean; unknown
        names are an error so that a typo never passes silently."""
        p = np.array(self.prior_mean if default is None else default, dtype=np.float32, copy=True)
        index = {n: i for i, n in enumerate(self.names)}
        for block, entries in d.items():
            for entry, value in entries.items():
                key = f"{block}/{entry}"
                if key not in index:
                    raise ParamError(f"unknown parameter {key!r}")
                if not math.isfinite(float(value)):
                    raise ParamError(f"parameter {key!r} is not finite: {value!r}")
                p[index[key]] = float(value)
        return p

    def dumps(self, p) -> str:
        return json.dumps(self.to_dict(p), indent=1)

    def loads(self, text: str) -> np.ndarray:
        return self.from_dict(json.loads(text))

    def describe(self) -> dict:
        """Self-describing layout for files and for clients of the engine server."""
        return dict(
            blocks=[dict(name=n, offset=self.offset(n), size=s) for n, s in self.sizes],
            names=list(self.names),
            prior_mean=[float(x) for x in self.prior_mean],
            prior_std=[float(x) for x in self.prior_std],
            expression_range=list(self.expression_range) if self.expression_range else None,
            control_modes={k: list(v) for k, v in CONTROL_MODES.items()},
            rotation="radians (pitch, yaw, roll); R = Rz(roll) @ Ry(yaw) @ Rx(pitch)",
            translation="centimetres, model frame (+X subject's left, +Y up, +Z out of the face)",
            illumination="9 SH coefficients x RGB, coefficient-major; H_0 = 1 (ambient gamma gives albedo*gamma)",
        )

    @classmethod
    def from_description(cls, d: Mapping) -> "ParamLayout":
        rng = d.get("expression_range")
        return cls(sizes=tuple((b["name"], int(b["size"])) for b in d["blocks"]), names=tuple(d["names"]),
                   prior_mean=np.asarray(d["prior_mean"], np.float32),
                   prior_std=np.asarray(d["prior_std"], np.float32),
                   expression_range=tuple(rng) if rng else None)


# Priors for pose, lighting and blendshape weights, chosen to cover FFHQ-like portraits.
POSE_STD_DEG = (10.0, 20.0, 5.0)  # pitch, yaw, roll
TRANSLATION_STD_CM = (1.0, 1.0, 2.0)
AMBIENT_MEAN = 0.85
SH_STD = (0.15, 0.2, 0.2, 0.2, 0.08, 0.08, 0.08, 0.08, 0.08)  # per SH coefficient, same for R, G, B
BLENDSHAPE_MEAN, BLENDSHAPE_STD = 0.05, 0.2


# Identity modes beyond the first 40 barely change a portrait at StyleGAN resolutions; fewer unknowns make DFR
# better conditioned.
DEFAULT_NUM_IDENTITY = 40


def layout_for_model(model, *, num_identity: int | None = DEFAULT_NUM_IDENTITY,
                     num_albedo: int | None = None) -> ParamLayout:
    """The parameter layout of a morphable model, using its first `num_identity` identity modes (None: all)
    and first `num_albedo` albedo modes (None: all)."""
    n_id = model.num_identity if num_identity is None else min(num_identity, model.num_identity)
    n_alb = model.num_albedo if num_albedo is None else min(num_albedo, model.num_albedo)
    names: list[str] = []
    mean: list[float] = []
    std: list[float] = []

    def add(block, entries, m, s):
        names.extend(f"{block}/{e}" for e in entries)
        mean.extend(m)
        std.extend(s)

    add("identity", [f"{i:03d}" for i in range(n_id)], [0.0] * n_id, [1.0] * n_id)
    add("albedo", model.albedo_names[:n_alb], [0.0] * n_alb, [1.0] * n_alb)
    k = model.num_expression
    if model.expression_prior == "blendshape":
        add("expression", model.expression_names, [BLENDSHAPE_MEAN] * k, [BLENDSHAPE_STD] * k)
        expression_range = (0.0, 1.0)
    else:
        add("expression", model.expression_names, [0.0] * k, [1.0] * k)
        expression_range = None
    add("rotation", ROTATION_NAMES, [0.0] * 3, [math.radians(a) for a in POSE_STD_DEG])
    add("translation", ("x", "y", "z"), [0.0] * 3, list(TRANSLATION_STD_CM))
    sh_names = [f"{c}_{ch}" for c in SH_NAMES for ch in "rgb"]
    sh_mean = [AMBIENT_MEAN if c == "L00" else 0.0 for c in SH_NAMES for _ in "rgb"]
    sh_std = [s for s in SH_STD for _ in "rgb"]
    add("illumination", sh_names, sh_mean, sh_std)
    sizes = (("identity", n_id), ("albedo", n_alb), ("expression", k), ("rotation", 3), ("translation", 3),
             ("illumination", 27))
    return ParamLayout(sizes=sizes, names=tuple(names), prior_mean=np.asarray(mean, np.float32),
                       prior_std=np.asarray(std, np.float32), expression_range=expression_range)


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(..., 3) (pitch, yaw, roll) radians -> (..., 3, 3) R = Rz(roll) @ Ry(yaw) @ Rx(pitch)."""
    import torch

    pitch, yaw, roll = angles.unbind(-1)
    one, zero = torch.ones_like(pitch), torch.zeros_like(pitch)
    cx, sx, cy, sy, cz, sz = pitch.cos(), pitch.sin(), yaw.cos(), yaw.sin(), roll.cos(), roll.sin()
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    return rz @ ry @ rx
