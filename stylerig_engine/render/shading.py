"""Shading: vertex normals, second-order spherical-harmonics (SH) Lambertian lighting, shaders.

SH convention (shared with params.py, the "illumination" block of 27 numbers):
  shading(n) = albedo * sum_k gamma_k H_k(n), per colour channel, where
    H_k = A_l Y_k(n) / (A_0 Y_0(n))
  with Y_k the real SH basis (k = 0..8 in the order L00, L1m1, L10, L11, L2m2, L2m1, L20, L21, L22, i.e.
  1; y, z, x; xy, yz, 3z^2 - 1, xz, x^2 - y^2) and A_l the Lambertian (clamped-cosine) convolution
  constants of Ramamoorthi & Hanrahan 2001: A_0 = pi, A_1 = 2 pi / 3, A_2 = pi / 4. Dividing by A_0 Y_0
  makes H_0 = 1, so gamma_0 alone is an ambient light: colour = albedo * gamma_0. Written out:
    H = [1, c1 y, c1 z, c1 x, c2 xy, c2 yz, c3 (3 z^2 - 1), c2 xz, c4 (x^2 - y^2)]
    c1 = 2 / sqrt(3), c2 = sqrt(15) / 4, c3 = sqrt(5) / 8, c4 = sqrt(15) / 8.
  gamma is stored coefficient-major: (gamma_0 r, gamma_0 g, gamma_0 b, gamma_1 r, ...) = (..., 9, 3).

  Normals are unit vectors in the world frame (model frame after the head rotation): the light is fixed to
  the camera/world, so turning the head moves it under the light. n = +X is the subject's left (the
  viewer's right), +Y up, +Z towards the camera. A light from direction d (unit, pointing from the
  surface towards the light) of irradiance E has gamma_k = E * pi * Y_0 * Y_k(d) (see `sh_directional`),
  which gives shading ~ E * max(n . d, 0) to second order.

Colours are linear RGB; apply `linear_to_srgb` before display or saving.
"""

from __future__ import annotations

import math

import torch

from .rasterizer import Fragments, _corner_index, interpolate, interpolate_planar

C1 = 2.0 / math.sqrt(3.0)
C2 = math.sqrt(15.0) / 4.0
C3 = math.sqrt(5.0) / 8.0
C4 = math.sqrt(15.0) / 8.0
# Real SH normalisation constants Y_lm = K * polynomial, for sh_directional.
_Y = (0.5 / math.sqrt(math.pi), math.sqrt(3 / (4 * math.pi)), math.sqrt(15 / (4 * math.pi)),
      math.sqrt(5 / (16 * math.pi)), math.sqrt(15 / (16 * math.pi)))


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals, differentiable.

    Keyword args:
      verts: (B, V, 3) positions (any frame; the normals come out in the same frame).
      faces: (T, 3) counter-clockwise seen from outside, so that normals point outwards.
    Returns (B, V, 3). Vertices in no triangle get a zero normal.
    """
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (B, V, 3), got {tuple(verts.shape)}")
    bsz, nv, _ = verts.shape
    idx = _corner_index(faces, bsz, nv, coords=True)  # (corner, coordinate, B T)
    # Planar (coordinate-major) layout: contiguous 1-D gathers and scatters, and a cross product written
    # out per component (torch.linalg.cross on (..., 3) rows is several times slower on CPU).
    flat = verts.permute(2, 0, 1).reshape(-1)
    g0, g1, g2 = flat.index_select(0, idx.view(-1)).view(3, 3, -1).unbind(0)
    ax, ay, az = (g1 - g0).unbind(0)
    bx, by, bz = (g2 - g0).unbind(0)
    fn = torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx]).view(-1)  # 2 * area * normal
    n = torch.zeros_like(flat)
    for k in range(3):
        n.index_add_(0, idx[k].view(-1), fn)
    n = n.view(3, bsz, nv)
    n = n / n.square().sum(0).sqrt().clamp(min=1e-12)
    return n.permute(1, 2, 0)


def sh_basis(normals: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) irradiance basis H_k(n), H_0 = 1 (see the module docstring).
    `dim` is the coordinate dimension (0 for planar (3, N) normals -> (9, N))."""
    x, y, z = normals.unbind(dim)
    one = torch.ones_like(x)
    return torch.stack([one, C1 * y, C1 * z, C1 * x, C2 * x * y, C2 * y * z, C3 * (3 * z * z - 1),
                        C2 * x * z, C4 * (x * x - y * y)], dim=dim)


def sh_coefficients(sh: torch.Tensor) -> torch.Tensor:
    """(B, 27) coefficient-major illumination block or (B, 9, 3) -> (B, 9, 3)."""
    if sh.ndim == 2 and sh.shape[1] == 27:
        return sh.view(-1, 9, 3)
    if sh.ndim == 3 and sh.shape[1:] == (9, 3):
        return sh
    raise ValueError(f"illumination must be (B, 27) or (B, 9, 3), got {tuple(sh.shape)}")


def sh_shade(normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Irradiance sum_k gamma_k H_k(n): (..., 3) normals with (..., 9, 3) coefficients -> (..., 3) RGB."""
    return (sh_basis(normals).unsqueeze(-1) * sh).sum(-2)


def sh_directional(direction, *, intensity: float = 1.0, ambient: float = 0.0, colour=(1.0, 1.0, 1.0),
                   dtype=torch.float32) -> torch.Tensor:
    """(27,) illumination block for a distant light plus an ambient term, in this module's convention.

    Keyword args:
      direction: (3,) from the face towards the light, world frame (+X the subject's left / viewer's right,
        +Y up, +Z towards the camera); normalised here.
      intensity: irradiance of the light on a surface facing it (the ideal shading max(n . d, 0) * intensity
        is reproduced to second order: 1.0625 * intensity facing the light).
      ambient: added to gamma_0 (uniform light; colour = albedo * ambient on its own).
      colour: RGB multiplier of both.
    """
    d = torch.as_tensor(direction, dtype=torch.float64)
    d = d / d.norm()
    x, y, z = d.tolist()
    y_k = torch.tensor([_Y[0], _Y[1] * y, _Y[1] * z, _Y[1] * x, _Y[2] * x * y, _Y[2] * y * z,
                        _Y[3] * (3 * z * z - 1), _Y[2] * x * z, _Y[4] * (x * x - y * y)], dtype=torch.float64)
    # gamma_k H_k(n) = E A_l Y_k(d) Y_k(n) with H_k = A_l Y_k / (A_0 Y_0)  =>  gamma_k = E A_0 Y_0 Y_k(d).
    gamma = intensity * math.pi * _Y[0] * y_k
    gamma[0] += ambient
    rgb = torch.as_tensor(colour, dtype=torch.float64)
    return (gamma[:, None] * rgb[None, :]).reshape(27).to(dtype)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear RGB in [0, 1] -> sRGB-encoded (the standard piecewise curve). Clamps to [0, 1]."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def per_image_sh(basis: torch.Tensor, gamma: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """(9, N) planar per-pixel basis values with each pixel's own image's (B, 9, 3) coefficients ->
    (3, N) irradiance. Covered pixels are ordered by image, so this is one small matmul per image."""
    if gamma.shape[0] == 1:
        return gamma[0].t() @ basis
    counts = torch.bincount(fragments.batch_index, minlength=gamma.shape[0]).tolist()
    return torch.cat([g.t() @ part for part, g in zip(basis.split(counts, dim=1), gamma.unbind(0))], dim=1)


def _unit_rows(n: torch.Tensor) -> torch.Tensor:
    """Normalise planar (3, N) vectors."""
    return n / n.square().sum(0).sqrt().clamp(min=1e-12)


# ---- shaders: Fragments + mesh attributes -> per-covered-pixel colours (N, 3) ------------------------
class SHShader(torch.nn.Module):
    """Lambertian SH shading with per-pixel normals (Phong interpolation of area-weighted vertex normals,
    renormalised) and per-vertex albedo interpolated per pixel."""

    def forward(self, fragments: Fragments, *, verts: torch.Tensor, faces: torch.Tensor, albedo: torch.Tensor,
                sh: torch.Tensor, normals: torch.Tensor | None = None) -> torch.Tensor:
        """Keyword args:
          fragments: from the rasteriser that drew `verts`.
          verts: (B, V, 3) world-frame positions (for the normals).
          faces: (T, 3).
          albedo: (B, V, 3) linear RGB.
          sh: (B, 27) or (B, 9, 3) illumination.
          normals: (B, V, 3) precomputed vertex normals (else computed from verts).
        Returns (N, 3) linear RGB of the covered pixels.
        """
        gamma = sh_coefficients(sh)
        if normals is None:
            normals = vertex_normals(verts, faces)
        n = _unit_rows(interpolate_planar(normals, fragments))  # (3, N)
        a = interpolate_planar(albedo, fragments)
        return (a * per_image_sh(sh_basis(n, dim=0), gamma, fragments)).t()


class AlbedoShader(torch.nn.Module):
    """Unlit: the interpolated albedo (debugging, segmentation-style renders)."""

    def forward(self, fragments: Fragments, *, albedo: torch.Tensor, **_) -> torch.Tensor:
        return interpolate(albedo, fragments)


class NormalShader(torch.nn.Module):
    """World-frame normals mapped to colours, 0.5 + 0.5 n (debugging)."""

    def forward(self, fragments: Fragments, *, verts: torch.Tensor, faces: torch.Tensor,
                normals: torch.Tensor | None = None, **_) -> torch.Tensor:
        if normals is None:
            normals = vertex_normals(verts, faces)
        return (0.5 + 0.5 * _unit_rows(interpolate_planar(normals, fragments))).t()
