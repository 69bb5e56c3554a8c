"""MeshRenderer: camera -> rasteriser -> shader -> composited image, with masks, depth and landmarks.

The three pieces are independent and swappable (PyTorch3D style); `Fragments` is the only thing passed
between the rasteriser and the shader. Everything is batched, differentiable (up to visibility, see
rasterizer.py) and runs on whatever device the inputs are on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .cameras import PerspectiveCamera
from .rasterizer import Fragments, MeshRasterizer
from .shading import SHShader


@dataclass
class RenderOutput:
    """What a render returns. Pixel coordinates follow cameras.py (pixel centres at integers, y down).

    Fields:
      image: (B, 3, H, W) linear RGB, composited over the background (0 where none was given).
      mask: (B, 1, H, W) 1 where the mesh covers the pixel centre, else 0 (hard, not differentiable).
      depth: (B, 1, H, W) centimetres from the camera plane, 0 on background (differentiable).
      landmarks: (B, K, 2) projected landmark vertices (x, y) in pixels, or None; not occlusion-tested.
      regions: name -> (B, 1, H, W) 0/1 masks of pixels whose visible triangle lies in that region.
      fragments: the rasteriser output (per-pixel triangle ids, barycentrics).
      screen: (B, V, 3) projected vertices (x_px, y_px, depth).
    """

    image: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    landmarks: torch.Tensor | None
    fragments: Fragments
    screen: torch.Tensor
    regions: dict[str, torch.Tensor] = field(default_factory=dict)


def composite(fragments: Fragments, colours: torch.Tensor, background: torch.Tensor | float | None = None
              ) -> torch.Tensor:
    """Per-covered-pixel colours (N, C) over a background -> (B, C, H, W). Differentiable in both.

    Keyword args:
      background: None (zeros), a number, a (C,) colour, or a (B, C, H, W) / (1, C, H, W) image.
    """
    if background is None or isinstance(background, (int, float)):
        return fragments.to_dense(colours, float(background or 0.0))
    h, w = fragments.image_size
    c = colours.shape[1]
    bg = torch.as_tensor(background, dtype=colours.dtype, device=colours.device)
    if bg.ndim == 1:
        bg = bg.view(1, -1, 1, 1)
    if bg.ndim != 4 or bg.shape[1] != c or (bg.shape[2:] != (h, w) and bg.shape[2:] != (1, 1)):
        raise ValueError(f"background must be (C,) or (B, {c}, {h}, {w}), got {tuple(bg.shape)}")
    return fragments.to_dense(colours, bg)


class MeshRenderer(torch.nn.Module):
    """Keyword args:
      camera: a PerspectiveCamera (its image_size sets the resolution).
      rasterizer: a MeshRasterizer of the same image size (default: fast backend, back faces culled,
        perspective-correct).
      shader: a module called as shader(fragments, verts=, faces=, albedo=, sh=, normals=) -> (N, 3)
        (default SHShader).
      chunk_pixels: render big batches a few images at a time, at most this many pixels per chunk
        (the outputs are concatenated; results are identical). Small working sets stay in cache: on CPU
        a batch of 32 at 512^2 renders several times faster per image in chunks than all at once.
        0 disables chunking.
    """

    def __init__(self, camera: PerspectiveCamera, rasterizer: MeshRasterizer | None = None,
                 shader: torch.nn.Module | None = None, *, chunk_pixels: int = 1 << 18):
        super().__init__()
        self.camera = camera
        self.rasterizer = rasterizer or MeshRasterizer(camera.image_size, near=camera.near)
        if tuple(self.rasterizer.image_size) != (camera.image_size, camera.image_size):
            raise ValueError(f"rasterizer size {self.rasterizer.image_size} != camera size {camera.image_size}")
        self.shader = shader or SHShader()
        self.chunk_pixels = chunk_pixels

    def forward(self, verts: torch.Tensor, faces: torch.Tensor, *, albedo: torch.Tensor, sh: torch.Tensor,
                background: torch.Tensor | float | None = None, landmarks: torch.Tensor | None = None,
                regions: dict[str, torch.Tensor] | None = None, normals: torch.Tensor | None = None
                ) -> RenderOutput:
        """Keyword args:
          verts: (B, V, 3) world-frame positions (model frame after R v + t), centimetres.
          faces: (T, 3) int64 vertex indices, counter-clockwise seen from outside.
          albedo: (B, V, 3) linear RGB per vertex.
          sh: (B, 27) or (B, 9, 3) illumination, see shading.py.
          background: see `composite`.
          landmarks: (K,) vertex ids to project, or None.
          regions: name -> (T,) bool, triangles of each region, for per-pixel region masks.
          normals: (B, V, 3) vertex normals if already known (else computed from verts).
        """
        if verts.ndim != 3 or verts.shape[-1] != 3:
            raise ValueError(f"verts must be (B, V, 3), got {tuple(verts.shape)}")
        if albedo.shape != verts.shape:
            raise ValueError(f"albedo must be {tuple(verts.shape)} like verts, got {tuple(albedo.shape)}")
        bsz = verts.shape[0]
        if sh.shape[0] != bsz or (normals is not None and normals.shape != verts.shape):
            raise ValueError(f"sh {tuple(sh.shape)} / normals must have the batch size {bsz} of verts")
        per = max(1, self.chunk_pixels // (self.camera.image_size ** 2)) if self.chunk_pixels else bsz
        if bsz <= per:
            return self._render(verts, faces, albedo, sh, background, landmarks, regions, normals)
        batched_bg = background if isinstance(background, torch.Tensor) and background.ndim == 4 \
            and background.shape[0] > 1 else None
        parts = []
        for s in range(0, bsz, per):
            e = min(s + per, bsz)
            parts.append(self._render(verts[s:e], faces, albedo[s:e], sh[s:e],
                                      background if batched_bg is None else batched_bg[s:e], landmarks, regions,
                                      None if normals is None else normals[s:e]))
        return RenderOutput(
            image=torch.cat([o.image for o in parts]), mask=torch.cat([o.mask for o in parts]),
            depth=torch.cat([o.depth for o in parts]),
            landmarks=None if landmarks is None else torch.cat([o.landmarks for o in parts if o.landmarks is not None]),
            fragments=Fragments.cat([o.fragments for o in parts], num_vertices=verts.shape[1]),
            screen=torch.cat([o.screen for o in parts]),
            regions={k: torch.cat([o.regions[k] for o in parts]) for k in parts[0].regions})

    def _render(self, verts, faces, albedo, sh, background, landmarks, regions, normals) -> RenderOutput:
        screen = self.camera.project(verts)
        fragments = self.rasterizer(screen, faces)
        colours = self.shader(fragments, verts=verts, faces=faces, albedo=albedo, sh=sh, normals=normals)
        image = composite(fragments, colours, background)
        mask = fragments.mask.to(image.dtype)
        depth = fragments.zbuf.unsqueeze(1).to(image.dtype)
        lms = screen[:, landmarks.long(), :2] if landmarks is not None else None
        region_masks = {}
        if regions:
            face = fragments.pix_to_face
            covered = face >= 0
            for name, tri in regions.items():
                hit = tri.to(face.device).index_select(0, face.clamp(min=0).view(-1)).view_as(face) & covered
                region_masks[name] = hit.unsqueeze(1).to(image.dtype)
        return RenderOutput(image=image, mask=mask, depth=depth, landmarks=lms, fragments=fragments,
                            screen=screen, regions=region_masks)
