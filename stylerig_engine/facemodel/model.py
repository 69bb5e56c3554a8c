"""The one in-memory morphable face model type used everywhere in the engine.

Coordinates are centimetres in a head-centred frame: +X is the subject's left, +Y up, +Z out of the face
(towards a camera placed in front). Colours are linear RGB in [0, 1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import atomic_write

REGIONS = ("face_skin", "eyes", "mouth_interior", "head_neck")
FORMAT_VERSION = 1


class ModelFormatError(ValueError):
    """A model file is missing data, truncated, or not a model file at all."""


@dataclass
class MorphableModel:
    name: str
    neutral: np.ndarray  # (V, 3) float32, centimetres
    identity_basis: np.ndarray  # (K_id, V, 3) float32; coefficients ~ N(0, 1)
    expression_basis: np.ndarray  # (K_exp, V, 3) float32; offsets at coefficient 1
    expression_names: list[str]  # (K_exp,) e.g. ARKit names for blendshape models
    expression_prior: str  # "blendshape" (weights in [0, 1]) or "gaussian" (PCA, ~ N(0, 1))
    albedo_mean: np.ndarray  # (V, 3) float32, linear RGB
    albedo_basis: np.ndarray  # (K_alb, V, 3) float32; coefficients ~ N(0, 1)
    albedo_names: list[str]  # (K_alb,)
    triangles: np.ndarray  # (T, 3) int32, render triangles, counter-clockwise seen from outside
    polygon_start: np.ndarray  # (P + 1,) int32 offsets into polygon_vertices (quads kept, for Blender)
    polygon_vertices: np.ndarray  # (sum of corners,) int32
    uvs: np.ndarray  # (U, 2) float32
    polygon_uvs: np.ndarray  # (sum of corners,) int32 into uvs, parallel to polygon_vertices
    landmarks: np.ndarray  # (68,) int32 vertex ids, Multi-PIE / iBUG order
    regions: dict[str, np.ndarray]  # name -> (V,) bool, names from REGIONS
    notice: str = ""  # licence / attribution text that travels with the data
    meta: dict = field(default_factory=dict)

    # ---- sizes -------------------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return int(self.neutral.shape[0])

    @property
    def num_identity(self) -> int:
        return int(self.identity_basis.shape[0])

    @property
    def num_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def num_albedo(self) -> int:
        return int(self.albedo_basis.shape[0])

    def validate(self) -> None:
        """Raise ModelFormatError naming the first inconsistency."""
        v = self.num_vertices
        checks = [
            (self.neutral.ndim == 2 and self.neutral.shape[1] == 3, "neutral must be (V, 3)"),
            (self.identity_basis.shape[1:] == (v, 3), "identity_basis must be (K, V, 3)"),
            (self.expression_basis.shape[1:] == (v, 3), "expression_basis must be (K, V, 3)"),
            (len(self.expression_names) == self.num_expression, "expression_names length != expression_basis"),
            (self.expression_prior in ("blendshape", "gaussian"), "expression_prior must be blendshape|gaussian"),
            (self.albedo_mean.shape == (v, 3), "albedo_mean must be (V, 3)"),
            (self.albedo_basis.shape[1:] == (v, 3), "albedo_basis must be (K, V, 3)"),
            (len(self.albedo_names) == self.num_albedo, "albedo_names length != albedo_basis"),
            (self.triangles.ndim == 2 and self.triangles.shape[1] == 3, "triangles must be (T, 3)"),
            (self.triangles.size == 0 or (self.triangles.min() >= 0 and self.triangles.max() < v),
             "triangles index outside the vertices"),
            (self.polygon_start.ndim == 1 and self.polygon_start[-1] == len(self.polygon_vertices),
             "polygon_start must end at len(polygon_vertices)"),
            (len(self.polygon_uvs) in (0, len(self.polygon_vertices)), "polygon_uvs must parallel polygon_vertices"),
            (self.landmarks.shape == (68,), "landmarks must be 68 vertex ids"),
            (self.landmarks.min() >= 0 and self.landmarks.max() < v, "landmark id outside the vertices"),
        ]
        for ok, message in checks:
            if not ok:
                raise ModelFormatError(f"model {self.name!r}: {message}")
        for name, mask in self.regions.items():
            if name not in REGIONS or mask.shape != (v,) or mask.dtype != bool:
                raise ModelFormatError(
                    f"model {self.name!r}: region {name!r} must be a (V,) bool mask named in {REGIONS}")

    # ---- storage: one .npz, no pickled objects -----------------------------------------------------
    _ARRAYS = ("neutral", "identity_basis", "expression_basis", "albedo_mean", "albedo_basis", "triangles",
               "polygon_start", "polygon_vertices", "uvs", "polygon_uvs", "landmarks")

    def save(self, path: str | Path, *, half: bool = True) -> None:
        """Save as a compressed .npz; bases in float16 by default (sub-micrometre error at these scales)."""
        arrays = {k: getattr(self, k) for k in self._ARRAYS}
        if half:
            for k in ("identity_basis", "expression_basis", "albedo_basis"):
                arrays[k] = arrays[k].astype(np.float16)
        for name, mask in self.regions.items():
            arrays[f"region/{name}"] = np.packbits(mask)
        header = dict(format="stylerig-morphable-model", version=FORMAT_VERSION, name=self.name,
                      expression_names=self.expression_names, expression_prior=self.expression_prior,
                      albedo_names=self.albedo_names, notice=self.notice, meta=self.meta)
        arrays["header"] = np.array(json.dumps(header))
        with atomic_write(path) as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "MorphableModel":
        path = Path(path)
        try:
            data = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except Exception as e:  # zipfile / format errors
            raise ModelFormatError(f"{path}: not a readable model file ({e})") from e
        with data:
            if "header" not in data.files:
                raise ModelFormatError(f"{path}: no 'header' entry; not a stylerig model file")
            header = json.loads(str(data["header"]))
            if header.get("format") != "stylerig-morphable-model":
                raise ModelFormatError(f"{path}: not a stylerig model file")
            missing = [k for k in cls._ARRAYS if k not in data.files]
            if missing:
                raise ModelFormatError(f"{path}: missing arrays {missing}")
            arrays = {k: data[k] for k in cls._ARRAYS}
            v = arrays["neutral"].shape[0]
            regions = {k.split("/", 1)[1]: np.unpackbits(data[k])[:v].astype(bool)
                       for k in data.files if k.startswith("region/")}
        for k in ("neutral", "identity_basis", "expression_basis", "albedo_mean", "albedo_basis", "uvs"):
            arrays[k] = arrays[k].astype(np.float32)
        model = cls(name=header["name"], expression_names=list(header["expression_names"]),
                    expression_prior=header["expression_prior"], albedo_names=list(header["albedo_names"]),
                    regions=regions, notice=header.get("notice", ""), meta=header.get("meta", {}), **arrays)
        model.validate()
        return model
