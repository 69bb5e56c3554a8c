"""Pluggable 68-point landmark detectors for the corpus writer.

A detector maps a batch of generated samples to landmarks in the generator's pixel coordinates:

    detector(ws (B, num_ws, w_dim), images (B, 3, R, R) float in [-1, 1]) -> (B, 68, 2) float32

with the engine's pixel convention (render/cameras.py: x right, y down, the centre of the top-left pixel at
(0, 0)); a face the detector cannot find gives NaN rows. The writer rescales them to the stored resolution.

Built in: `exact` (the generator's own `landmarks(ws)`, e.g. the synthetic world's exact projections), `fan`
(the optional face-alignment package, 2D-FAN, 68 points; `pip install stylerig[landmarks]`) and `none`.
`register_detector(name, factory)` adds another; `factory(generator, device)` returns the detector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from .config import NUM_LANDMARKS, CorpusConfigError, CorpusError

FAN_EXTRA_HINT = "install the optional extra: pip install 'stylerig[landmarks]' (the face-alignment package)"


class LandmarkDetector(Protocol):
    name: str

    def __call__(self, ws: torch.Tensor, images: torch.Tensor) -> torch.Tensor: ...


class ExactLandmarks:
    """The generator's exact landmarks: `generator.landmarks(ws)` -> (B, 68, 2) pixels at img_resolution."""

    name = "exact"

    def __init__(self, generator, device=None):
        if not callable(getattr(generator, "landmarks", None)):
            raise CorpusConfigError(
                f"--landmarks exact needs a generator with exact landmarks (a landmarks(ws) method); "
                f"{type(generator).__name__} has none: use --landmarks fan or --landmarks none")
        self.generator = generator

    def __call__(self, ws: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        lm = self.generator.landmarks(ws)
        if tuple(lm.shape) != (ws.shape[0], NUM_LANDMARKS, 2):
            raise CorpusError(f"generator.landmarks returned shape {tuple(lm.shape)}, expected ({ws.shape[0]}, 68, 2)")
        return lm.float()


class FanLandmarks:
    """2D-FAN (Bulat & Tzimiropoulos 2017) through the face-alignment package; its weights download on first use.

    The images are given at the generator's resolution as RGB 0..255. When several faces are found the one
    with the largest landmark bounding box is kept; when none is found the landmarks are NaN.
    """

    name = "fan"

    def __init__(self, generator=None, device="cpu"):
        try:
            import face_alignment
        except ImportError as e:
            raise CorpusConfigError(f"--landmarks fan needs the face-alignment package: {FAN_EXTRA_HINT}") from e
        types = face_alignment.LandmarksType
        kind = getattr(types, "TWO_D", None) or types._2D
        self.fa = face_alignment.FaceAlignment(kind, device=str(device), flip_input=False)

    @staticmethod
    def _pick(found) -> np.ndarray:
        if found is None:
            return np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
        if isinstance(found, (list, tuple)):
            faces = [np.asarray(f, np.float32)[:, :2] for f in found]
        else:
            a = np.asarray(found, np.float32)
            faces = list(a[:, :2].reshape(-1, NUM_LANDMARKS, 2)) if a.size else []
        if not faces:
            return np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
        return max(faces, key=lambda f: float(np.prod(f.max(0) - f.min(0))))

    def __call__(self, ws: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        rgb = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
        with torch.no_grad():
            if hasattr(self.fa, "get_landmarks_from_batch"):
                found = self.fa.get_landmarks_from_batch(rgb)
            else:
                hwc = rgb.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
                found = [self.fa.get_landmarks_from_image(im) for im in hwc]
        return torch.from_numpy(np.stack([self._pick(f) for f in found])).to(images.device)


_DETECTORS: dict[str, Callable] = {
    "exact": ExactLandmarks,
    "fan": FanLandmarks,
    "none": lambda generator, device: None,
}


def register_detector(name: str, factory: Callable) -> None:
    """Make `--landmarks NAME` available: factory(generator, device) -> detector (or None to store none)."""
    _DETECTORS[name] = factory


def detector_names() -> list[str]:
    return list(_DETECTORS)


def make_detector(name: str, generator, device) -> LandmarkDetector | None:
    if name not in _DETECTORS:
        raise CorpusConfigError(f"unknown landmark detector {name!r}; known: {', '.join(_DETECTORS)}")
    return _DETECTORS[name](generator, device)
