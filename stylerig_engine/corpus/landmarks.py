"""Pluggable 68-point landmark detectors for the corpus writer.

A detector maps a batch of generated samples to landmarks in the generator's pixel coordinates:

    detector(ws (B, num_ws, w_dim), images (B, 3, R, R) float in [-1, 1]) -> (B, 68, 2) float32

with the engine's pixel convention (render/cameras.py: x right, y down, the centre of the top-left pixel at
(0, 0)); a face the detector cannot find gives NaN rows. The writer rescales them to the stored resolution.

Built in:
  exact      the generator's own `landmarks(ws)` (e.g. the synthetic world's exact projections)
  mediapipe  MediaPipe's face mesh, its model inside the wheel (offline; `pip install 'stylerig[landmarks]'`),
             478 points mapped to the iBUG 68 by mediapipe68.TABLE; the default for generators without their own
  fan        2D-FAN through the face-alignment package (`pip install 'stylerig[landmarks-fan]'`; downloads its
             weights on first use, so not offline)
  dlib       dlib's 68-point shape predictor, opt-in: you bring the predictor file (its iBUG 300-W training data
             is licensed for non-commercial use only) and name it in $STYLERIG_DLIB_PREDICTOR
  preflight  mediapipe, and where it finds no face the default face's neutral landmarks instead: only for
             preflights of the training chain on random networks, whose noise images hold no face
  none       no landmarks
`register_detector(name, factory)` adds another; `factory(generator, device)` returns the detector.
`resolve_landmarks("auto", generator)` is what `--landmarks auto` means: exact for a generator with its own
landmarks, else the installed offline detector (mediapipe), else an error naming the extra to install.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from .config import NUM_LANDMARKS, CorpusConfigError, CorpusError

LANDMARKS_EXTRA_HINT = ("pip install 'stylerig[landmarks]' "
                        "(MediaPipe's face mesh, offline: its model ships in the wheel)")
FAN_EXTRA_HINT = "install the optional extra: pip install 'stylerig[landmarks-fan]' (the face-alignment package)"
DLIB_PREDICTOR_ENV = "STYLERIG_DLIB_PREDICTOR"


class LandmarkDetector(Protocol):
    name: str

    def __call__(self, ws: torch.Tensor, images: torch.Tensor) -> torch.Tensor: ...


class ExactLandmarks:
    """The generator's exact landmarks: `generator.landmarks(ws)` -> (B, 68, 2) pixels at img_resolution."""

    name = "exact"
    reads_images = False  # writer.detect_landmarks need not synthesise images for it

    def __init__(self, generator, device=None):
        if not callable(getattr(generator, "landmarks", None)):
            raise CorpusConfigError(
                f"--landmarks exact needs a generator with exact landmarks (a landmarks(ws) method); "
                f"{type(generator).__name__} has none: use --landmarks auto or mediapipe ({LANDMARKS_EXTRA_HINT})")
        self.generator = generator

    def __call__(self, ws: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        lm = self.generator.landmarks(ws)
        if tuple(lm.shape) != (ws.shape[0], NUM_LANDMARKS, 2):
            raise CorpusError(f"generator.landmarks returned shape {tuple(lm.shape)}, expected ({ws.shape[0]}, 68, 2)")
        return lm.float()


class FanLandmarks:
    """2D-FAN (Bulat & Tzimiropoulos 2017) through the face-alignment package; its weights download on first use,
    so it needs the network once (the offline default is mediapipe).

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


def _nan_landmarks(n: int = 1) -> np.ndarray:
    return np.full((n, NUM_LANDMARKS, 2), np.nan, np.float32)


def images_to_uint8(images: torch.Tensor, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """(B, 3, R, R) float in [-1, 1] -> ((B, r, r, 3) uint8 RGB, R / r), quantized as NVIDIA's scripts save images.

    Images larger than max_side are first reduced (area average when R is a multiple, else antialiased
    bilinear), since detectors that crop the face to a fixed input size gain nothing from more pixels.
    """
    from .writer import quantize, resize_images  # (the writer imports this module)

    x = images.detach().float()
    r = x.shape[-1]
    if max_side is not None and r > max_side:
        x = resize_images(x, max_side)
    return quantize(x).contiguous().cpu().numpy(), r / x.shape[-1]


def _to_full_resolution(lm: np.ndarray, scale: float) -> np.ndarray:
    """Pixel-centre coordinates at the reduced size -> at the generator's size (cameras.py convention)."""
    return lm if scale == 1 else (lm + 0.5) * scale - 0.5


def _largest(faces: list[np.ndarray]) -> np.ndarray:
    return max(faces, key=lambda f: float(np.prod(f.max(0) - f.min(0))))


def mediapipe_face_mesh():
    """MediaPipe's legacy face-mesh solution module (its TFLite models ship inside the wheel), or a
    CorpusConfigError naming the extra. MediaPipe 0.10.30+ no longer ships it; the extra pins 0.10.14-0.10.21."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging: warnings about its own graph
    try:
        import mediapipe
    except ImportError as e:
        raise CorpusConfigError(f"--landmarks mediapipe needs MediaPipe: {LANDMARKS_EXTRA_HINT}") from e
    try:
        from mediapipe.python.solutions import face_mesh
    except ImportError as e:
        raise CorpusConfigError(
            f"MediaPipe {getattr(mediapipe, '__version__', '?')} lacks the face-mesh solution (0.10.30 and later "
            f"dropped it and its bundled model): {LANDMARKS_EXTRA_HINT}, which pins 0.10.14-0.10.21") from e
    return face_mesh


class MediaPipeLandmarks:
    """MediaPipe's face mesh (478 points, refine_landmarks) mapped to the iBUG 68 (mediapipe68.TABLE); offline.

    Keyword args:
      max_side: images larger than this are reduced first (the face mesh runs on a 192-256 px crop of the face,
        so 512 loses nothing measurable and saves converting 1024^2 images).
      max_faces: faces looked for per image; with several, the one with the largest landmark box is kept.
      min_confidence: MediaPipe's face-detection confidence threshold.
    Images with no face give NaN rows and are counted in `images_without_face`.
    """

    name = "mediapipe"

    def __init__(self, generator=None, device="cpu", *, max_side: int = 512, max_faces: int = 2,
                 min_confidence: float = 0.5):
        from .mediapipe68 import correspondence_matrix

        face_mesh = mediapipe_face_mesh()
        self._mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True,
                                        min_detection_confidence=min_confidence)
        self._matrix = correspondence_matrix()
        self.max_side = max_side
        self.images_seen = self.images_without_face = 0

    def detect(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (68, 2) float32 pixel coordinates at that size (NaN when no face is found)."""
        h, w = image.shape[:2]
        found = self._mesh.process(np.ascontiguousarray(image)).multi_face_landmarks
        self.images_seen += 1
        if not found:
            self.images_without_face += 1
            return _nan_landmarks()[0]
        faces = []
        for face in found:
            # Normalised by the image size with continuous coordinates (0 = the left edge of the first pixel).
            pts = np.array([(p.x * w - 0.5, p.y * h - 0.5) for p in face.landmark], np.float32)
            faces.append(self._matrix[:, :len(pts)] @ pts)
        return _largest(faces).astype(np.float32)

    def __call__(self, ws: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        u8, scale = images_to_uint8(images, self.max_side)
        lm = np.stack([self.detect(im) for im in u8]) if len(u8) else _nan_landmarks(0)
        return torch.from_numpy(_to_full_resolution(lm, scale)).to(images.device)

    def summary(self) -> str:
        return f"mediapipe landmarks: no face in {self.images_without_face} of {self.images_seen} images"

    def close(self) -> None:
        self._mesh.close()


class DlibLandmarks:
    """dlib's 68-point shape predictor (Kazemi & Sullivan 2014) on its HOG face detector; opt-in.

    The predictor file is not shipped or downloaded: the widely used shape_predictor_68_face_landmarks.dat is
    trained on iBUG 300-W, whose images are licensed for non-commercial research only. Point
    $STYLERIG_DLIB_PREDICTOR at your copy and install dlib yourself (pip install dlib builds it from source).
    """

    name = "dlib"

    def __init__(self, generator=None, device="cpu", *, upsample: int = 1):
        path = os.environ.get(DLIB_PREDICTOR_ENV)
        caveat = ("dlib's 68-point predictor is opt-in: its usual model (shape_predictor_68_face_landmarks.dat) "
                  "is trained on iBUG 300-W, licensed for non-commercial use only")
        if not path:
            raise CorpusConfigError(f"--landmarks dlib: {caveat}; set {DLIB_PREDICTOR_ENV}=PATH to your copy "
                                    f"(or use the offline default: {LANDMARKS_EXTRA_HINT})")
        if not os.path.isfile(path):
            raise CorpusConfigError(f"--landmarks dlib: {DLIB_PREDICTOR_ENV}={path}: no such file")
        try:
            import dlib
        except ImportError as e:
            raise CorpusConfigError(f"--landmarks dlib needs the dlib package (pip install dlib); {caveat}") from e
        self._faces = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(path)
        self.upsample = upsample
        self.images_seen = self.images_without_face = 0

    def detect(self, image: np.ndarray) -> np.ndarray:
        rects = list(self._faces(image, self.upsample))
        self.images_seen += 1
        if not rects:
            self.images_without_face += 1
            return _nan_landmarks()[0]
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = self._predictor(image, rect)
        return np.array([(shape.part(k).x, shape.part(k).y) for k in range(NUM_LANDMARKS)], np.float32)

    def __call__(self, ws: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        u8, _ = images_to_uint8(images)
        lm = np.stack([self.detect(im) for im in u8]) if len(u8) else _nan_landmarks(0)
        return torch.from_numpy(lm).to(images.device)

    def summary(self) -> str:
        return f"dlib landmarks: no face in {self.images_without_face} of {self.images_seen} images"


class PreflightLandmarks:
    """For preflights only: MediaPipe runs on every image as it would on real faces, and where it finds none
    (all of a random network's noise images) the default face's neutral landmarks stand in, so that the rest of
    the chain (DFR, RigNets, evaluation, serving) can run on real-size networks. The corpus manifest records
    `landmarks: preflight`; a rig trained on it is a test artefact, not a rig."""

    name = "preflight"

    def __init__(self, generator, device="cpu"):
        self.detector = MediaPipeLandmarks(generator, device)
        self._templates: dict[int, torch.Tensor] = {}
        self.substituted = 0

    def template(self, resolution: int) -> torch.Tensor:
        if resolution not in self._templates:
            from ..facemodel import load_default_model
            from ..render.face import FaceRenderer

            renderer = FaceRenderer(load_default_model(), image_size=resolution)
            with torch.no_grad():
                self._templates[resolution] = renderer.landmarks(renderer.neutral_params(1))[0].float()
        return self._templates[resolution]

    def __call__(self, ws: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        lm = self.detector(ws, images).clone()
        missing = torch.isnan(lm).flatten(1).any(1)
        if missing.any():
            lm[missing] = self.template(images.shape[-1]).to(lm.device)
            self.substituted += int(missing.sum())
        return lm

    def summary(self) -> str:
        d = self.detector
        return (f"preflight landmarks: MediaPipe found no face in {d.images_without_face} of {d.images_seen} images; "
                f"the default face's neutral landmarks stand in for those {self.substituted} (preflight only)")


_DETECTORS: dict[str, Callable] = {
    "exact": ExactLandmarks,
    "mediapipe": MediaPipeLandmarks,
    "fan": FanLandmarks,
    "dlib": DlibLandmarks,
    "preflight": PreflightLandmarks,
    "none": lambda generator, device: None,
}

# Detectors that need nothing from the network at run time, in the order `--landmarks auto` tries them.
OFFLINE_DETECTORS = ("mediapipe",)


def register_detector(name: str, factory: Callable) -> None:
    """Make `--landmarks NAME` available: factory(generator, device) -> detector (or None to store none)."""
    _DETECTORS[name] = factory


def detector_names() -> list[str]:
    return list(_DETECTORS)


def make_detector(name: str, generator, device) -> LandmarkDetector | None:
    if name not in _DETECTORS:
        raise CorpusConfigError(f"unknown landmark detector {name!r}; known: {', '.join(_DETECTORS)}")
    return _DETECTORS[name](generator, device)


def detector_available(name: str) -> bool:
    """Whether the optional package behind an offline detector imports here."""
    if name == "mediapipe":
        try:
            mediapipe_face_mesh()
        except CorpusConfigError:
            return False
        return True
    return name in _DETECTORS


def resolve_landmarks(name: str, generator) -> str:
    """What `--landmarks NAME` means for this generator: `auto` becomes `exact` for a generator with its own
    landmarks, else the first installed offline detector; with none installed it is an error that names the
    extra, never a silent corpus without landmarks. Other names are returned as they are."""
    if name != "auto":
        return name
    if callable(getattr(generator, "landmarks", None)):
        return "exact"
    for candidate in OFFLINE_DETECTORS:
        if detector_available(candidate):
            return candidate
    raise CorpusConfigError(
        f"--landmarks auto: the generator ({type(generator).__name__}) has no landmarks of its own and no offline "
        f"landmark detector is installed; install one: {LANDMARKS_EXTRA_HINT}. Or name a detector: "
        f"--landmarks fan (face-alignment, downloads its weights), dlib (opt-in, non-commercial), or none "
        f"(a corpus without landmarks, which DFR cannot train on)")
