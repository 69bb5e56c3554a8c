"""Morphable face models: the MorphableModel type, the default ICT model and importers.

    from stylerig_engine.facemodel import load_default_model
    model = load_default_model()  # cached ICT Face Model Light, converted on first use
"""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import atomic_write, cache_dir
from .model import REGIONS, ModelFormatError, MorphableModel

__all__ = [
    "DEFAULT_MODEL_NAME",
    "REGIONS",
    "ModelFormatError",
    "ModelNotAvailableError",
    "MorphableModel",
    "default_model_path",
    "find_ict_source",
    "install_model",
    "load_default_model",
    "load_model",
    "models_dir",
]

DEFAULT_MODEL_NAME = "ict-face-light"
SOURCE_ENV = "STYLERIG_ICT_SOURCE"


class ModelNotAvailableError(FileNotFoundError):
    """The default model is neither cached nor convertible from a local source."""


def models_dir() -> Path:
    return cache_dir() / "models"


def default_model_path() -> Path:
    return models_dir() / f"{DEFAULT_MODEL_NAME}.npz"


def shared_ict_pack() -> Path:
    """The development/CI copy of the ICT pack: <repo>/../shared/assets/ict-facekit."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "assets" / "ict-facekit"


def find_ict_source() -> Path | None:
    """Where the default model can be converted from: $STYLERIG_ICT_SOURCE, the shared pack, or a previous
    `stylerig assets fetch ict` download in the cache; None if none exists."""
    from .fetch import ict_download_dir

    env = os.environ.get(SOURCE_ENV)
    if env:
        return Path(env)
    for candidate in (shared_ict_pack(), ict_download_dir()):
        if (candidate / "ict_face_light_pack.npz").is_file() or (candidate / "generic_neutral_mesh.obj").is_file():
            return candidate
    return None


def install_model(model: MorphableModel, path: str | os.PathLike | None = None) -> Path:
    """Save a model into the cache (default: models_dir()/<name>.npz) with its notice beside it."""
    path = Path(path) if path is not None else models_dir() / f"{model.name}.npz"
    model.save(path)
    if model.notice:
        with atomic_write(path.with_suffix(".NOTICE.txt"), "w") as f:
            f.write(model.notice)
    return path


def load_model(name_or_path: str | os.PathLike) -> MorphableModel:
    """A cached model by name (`stylerig assets import ... --out NAME`) or a model .npz path."""
    p = Path(name_or_path)
    if p.suffix == ".npz" or p.exists():
        return MorphableModel.load(p)
    if str(name_or_path) == DEFAULT_MODEL_NAME:
        return load_default_model()
    cached = models_dir() / f"{name_or_path}.npz"
    if not cached.is_file():
        raise ModelNotAvailableError(f"no model named {str(name_or_path)!r} in {models_dir()}")
    return MorphableModel.load(cached)


def load_default_model(*, rebuild: bool = False) -> MorphableModel:
    """The default ICT morphable model, from the cache; converted from a local source on first use.

    Sources, in order: $STYLERIG_ICT_SOURCE (an upstream FaceXModel folder or a pack folder), the shared
    pack at <repo>/../shared/assets/ict-facekit, a previous `stylerig assets fetch ict` download.
    """
    from .ict import CONVERTER_VERSION

    path = default_model_path()
    source = None
    if path.is_file() and not rebuild:
        try:
            model = MorphableModel.load(path)
        except ModelFormatError:
            model = None  # damaged cache: rebuild it below
        if model is not None:
            if model.meta.get("converter_version") == CONVERTER_VERSION:
                return model
            source = find_ict_source()  # converted by another version: rebuild when possible
            if source is None:
                return model
    source = source or find_ict_source()
    if source is None:
        raise ModelNotAvailableError(
            f"the default face model (ICT Face Model Light) is not installed: {path} does not exist and no "
            f"local source was found (${SOURCE_ENV}, {shared_ict_pack()}). "
            "Run `stylerig assets fetch ict` to download it (about 390 MB).")
    from .fetch import is_download, verify_download
    from .ict import import_ict

    if is_download(source):
        verify_download(source)
    model = import_ict(source)
    install_model(model, path)
    return model
