"""Differentiable renderer: cameras, rasteriser, SH shading, and the face-parameter glue (docs/renderer.md).

    from stylerig_engine.render import FaceRenderer
    out = FaceRenderer(model, image_size=256)(params)   # image, mask, depth, landmarks, regions

Names are imported lazily so that `stylerig --help` does not pay for torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PerspectiveCamera": "cameras", "portrait_camera": "cameras", "ffhq_alignment": "cameras",
    "Fragments": "rasterizer", "MeshRasterizer": "rasterizer", "interpolate": "rasterizer",
    "visibility": "rasterizer", "visibility_reference": "rasterizer", "visibility_naive": "rasterizer",
    "barycentrics": "rasterizer", "BACKENDS": "rasterizer",
    "SHShader": "shading", "AlbedoShader": "shading", "NormalShader": "shading", "vertex_normals": "shading",
    "sh_basis": "shading", "sh_shade": "shading", "sh_directional": "shading", "linear_to_srgb": "shading",
    "srgb_to_linear": "shading",
    "MeshRenderer": "renderer", "RenderOutput": "renderer", "composite": "renderer",
    "FaceRenderer": "face",
    "toy_head": "synthetic",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
