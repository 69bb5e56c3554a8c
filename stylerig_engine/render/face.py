"""FaceRenderer: face parameter vectors -> rendered images, masks, depth and 2D landmarks.

p (B, D) in a ParamLayout (params.py) is turned into
  shape   = neutral + identity . identity_basis + expression . expression_basis      (model frame, cm)
  posed   = R(rotation) shape + translation                                           (world frame)
  albedo  = clamp(albedo_mean + albedo . albedo_basis, 0, 1)                          (linear RGB)
  light   = illumination block (27 SH coefficients, see shading.py)
and rendered by a MeshRenderer with a portrait camera that frames the model's neutral face the way FFHQ
aligns its images (cameras.portrait_camera). Expression weights are used as given (not clamped), so that
gradients reach them everywhere; clamp with ParamLayout.clamp where needed.
"""

from __future__ import annotations

import numpy as np
import torch

from ..params import ParamLayout, layout_for_model, rotation_matrix
from .cameras import PerspectiveCamera, portrait_camera
from .rasterizer import MeshRasterizer
from .renderer import MeshRenderer, RenderOutput
from .shading import vertex_normals


class FaceRenderer(torch.nn.Module):
    """Keyword args:
      model: a MorphableModel.
      layout: its ParamLayout (default layout_for_model(model)); may use fewer identity/albedo modes.
      image_size: output width = height in pixels.
      device: where the model's buffers live (inputs must be on the same device).
      dtype: float dtype of the buffers (float32; float64 for gradient checks).
      camera: override the portrait camera (its image_size must equal image_size).
      backend: rasteriser visibility backend ("torch", "reference", "naive"; see rasterizer.py).
      shader: override the SH shader (see shading.py for others).
      distance: camera distance to the face in centimetres for the default camera.
    """

    # buffers (declared for type checkers: nn.Module types attributes Tensor | Module)
    neutral: torch.Tensor
    identity_basis: torch.Tensor
    expression_basis: torch.Tensor
    albedo_mean: torch.Tensor
    albedo_basis: torch.Tensor
    faces: torch.Tensor
    landmark_ids: torch.Tensor
    landmark_neutral: torch.Tensor
    landmark_identity: torch.Tensor
    landmark_expression: torch.Tensor

    def __init__(self, model, layout: ParamLayout | None = None, *, image_size: int = 256,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 camera: PerspectiveCamera | None = None, backend: str = "torch",
                 shader: torch.nn.Module | None = None, distance: float = 55.0):
        super().__init__()
        self.layout = layout or layout_for_model(model)
        lay = self.layout
        n_id, n_alb, n_exp = lay.size("identity"), lay.size("albedo"), lay.size("expression")
        if n_id > model.num_identity or n_alb > model.num_albedo or n_exp != model.num_expression:
            raise ValueError(f"layout (identity {n_id}, albedo {n_alb}, expression {n_exp}) does not fit model "
                             f"{model.name!r} ({model.num_identity}, {model.num_albedo}, {model.num_expression})")
        v = model.num_vertices
        self.num_vertices = v
        self.expression_names = list(model.expression_names)

        def buf(name, array, dt=dtype):
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array)).to(device=device, dtype=dt),
                                 persistent=False)

        buf("neutral", model.neutral)
        buf("identity_basis", model.identity_basis[:n_id].reshape(n_id, v * 3))
        buf("expression_basis", model.expression_basis.reshape(n_exp, v * 3))
        buf("albedo_mean", model.albedo_mean)
        buf("albedo_basis", model.albedo_basis[:n_alb].reshape(n_alb, v * 3))
        buf("faces", model.triangles, torch.int64)
        buf("landmark_ids", model.landmarks, torch.int64)
        lm = np.asarray(model.landmarks)
        buf("landmark_neutral", model.neutral[lm])
        buf("landmark_identity", model.identity_basis[:n_id][:, lm].reshape(n_id, -1))
        buf("landmark_expression", model.expression_basis[:, lm].reshape(n_exp, -1))
        tri = np.asarray(model.triangles)
        self.region_names = sorted(model.regions)
        for name in self.region_names:  # a triangle is in a region when all its corners are
            buf(f"region_{name}", np.asarray(model.regions[name])[tri].all(1), torch.bool)
        if camera is None:
            camera = portrait_camera(np.asarray(model.neutral)[np.asarray(model.landmarks)], image_size,
                                     distance=distance)
        if camera.image_size != image_size:
            raise ValueError(f"camera image_size {camera.image_size} != image_size {image_size}")
        rasterizer = MeshRasterizer(image_size, backend=backend, near=camera.near)
        self.renderer = MeshRenderer(camera, rasterizer, shader)

    @property
    def camera(self) -> PerspectiveCamera:
        return self.renderer.camera

    @property
    def image_size(self) -> int:
        return self.camera.image_size

    @property
    def regions(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"region_{name}") for name in self.region_names}

    def shape(self, params: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, V, 3) unposed model-frame vertices (identity and expression applied)."""
        blocks = self.layout.split(params)
        offs = blocks["identity"] @ self.identity_basis + blocks["expression"] @ self.expression_basis
        return self.neutral + offs.view(-1, self.num_vertices, 3)

    def pose(self, verts: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) model-frame vertices -> world frame: R v + t with the parameters' rotation and translation."""
        blocks = self.layout.split(params)
        rot = rotation_matrix(blocks["rotation"])  # (B, 3, 3)
        return verts @ rot.transpose(1, 2) + blocks["translation"][:, None, :]

    def albedo(self, params: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, V, 3) linear RGB in [0, 1]."""
        offs = self.layout.split(params)["albedo"] @ self.albedo_basis
        return (self.albedo_mean + offs.view(-1, self.num_vertices, 3)).clamp(0.0, 1.0)

    def geometry(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> posed (B, V, 3) world-frame vertices and their (B, V, 3) vertex normals."""
        verts = self.pose(self.shape(params), params)
        return verts, vertex_normals(verts, self.faces)

    def landmarks(self, params: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, 68, 2) landmark pixel coordinates without rendering (cheap; same as a render's)."""
        blocks = self.layout.split(params)
        offs = blocks["identity"] @ self.landmark_identity + blocks["expression"] @ self.landmark_expression
        lm = self.landmark_neutral + offs.view(-1, self.landmark_neutral.shape[0], 3)
        return self.camera.project(self.pose(lm, params))[..., :2]

    def forward(self, params: torch.Tensor, background: torch.Tensor | float | None = None) -> RenderOutput:
        """Keyword args:
          params: (B, D) parameter vectors of self.layout, same device/dtype as the renderer.
          background: None (black), a number, a (3,) colour or a (B, 3, H, W) linear-RGB image to render onto.
        Returns RenderOutput(image, mask, depth, landmarks (B, 68, 2), regions {region: (B, 1, H, W)}, ...).
        """
        if params.ndim != 2:
            raise ValueError(f"params must be (B, D), got {tuple(params.shape)}")
        self.layout.check(params)
        verts, normals = self.geometry(params)
        sh = self.layout.split(params)["illumination"]
        return self.renderer(verts, self.faces, albedo=self.albedo(params), sh=sh, background=background,
                             landmarks=self.landmark_ids, regions=self.regions, normals=normals)

    def neutral_params(self, batch: int = 1, *, ambient: float = 0.9) -> torch.Tensor:
        """(batch, D): zero identity/albedo/expression/pose and an ambient-only light."""
        p = torch.zeros(batch, self.layout.dim, dtype=self.neutral.dtype, device=self.neutral.device)
        p[:, self.layout.offset("illumination"):self.layout.offset("illumination") + 3] = ambient
        return p
