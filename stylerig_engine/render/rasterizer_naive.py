"""The naive vectorised bounding-box rasteriser this project started from: the baseline of the rasteriser
benchmark (benchmarks/render.py) and a third implementation the tests compare the fast one against.

Every triangle is padded to the largest bounding box in the mesh, the z-buffer is a float scatter_reduce(amax)
of 1/z plus a second pass for the winning id. It shares the triangle set-up, inside test and depth of
rasterizer.py, so it agrees with the fast "torch" backend pixel for pixel; it is just slow. Not for rendering.
"""

from __future__ import annotations

import torch

from .rasterizer import _MAX_KEY, _check, _coefficients, _corners, _cull_and_bound


@torch.no_grad()
def visibility_naive(screen: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], *,
                     cull_backfaces: bool = True, near: float = 1e-3) -> torch.Tensor:
    """The baseline: per image, every triangle padded to the largest bounding box in the mesh, a float
    z-buffer by scatter_reduce(amax) of 1/z and a second pass to pick the winning id. Benchmarks only.
    (Back faces get no pixels, for equal output, but the baseline still pays for every triangle.)"""
    _check(screen, faces)
    h, w = image_size
    nt = faces.shape[0]
    dev = screen.device
    out = []
    for b in range(screen.shape[0]):
        p = _corners(screen[b:b + 1], faces)
        bx, by, nx, ny = _cull_and_bound(p, h, w, cull_backfaces=cull_backfaces, near=near)
        coef = _coefficients(p, bx, by)
        x0, x1, x2, y0, y1, y2 = p[:6]
        # The baseline's box is the unclipped extent (it does not know about culling).
        kx = int((torch.maximum(torch.maximum(x0, x1), x2) - torch.minimum(torch.minimum(x0, x1), x2)).max()) + 2
        ky = int((torch.maximum(torch.maximum(y0, y1), y2) - torch.minimum(torch.minimum(y0, y1), y2)).max()) + 2
        kx, ky = min(kx, w), min(ky, h)
        col = torch.arange(kx, device=dev).view(1, 1, kx).expand(nt, ky, kx)
        row = torch.arange(ky, device=dev).view(1, ky, 1).expand(nt, ky, kx)
        inbox = (col < nx.view(nt, 1, 1)) & (row < ny.view(nt, 1, 1))
        cf = coef.view(3, 4, nt, 1, 1)
        lam = cf[2] + cf[0] * col.to(coef.dtype) + cf[1] * row.to(coef.dtype)
        hit = inbox & (lam[0] >= 0) & (lam[1] >= 0) & (lam[2] >= 0)
        pix = ((by.view(nt, 1, 1) + row) * w + bx.view(nt, 1, 1) + col)[hit]
        invz = lam[3][hit]
        tid = torch.arange(nt, device=dev).view(nt, 1, 1).expand(nt, ky, kx)[hit]
        best = torch.full((h * w,), -float("inf"), dtype=invz.dtype, device=dev)
        best.scatter_reduce_(0, pix, invz, reduce="amax")
        win = invz >= best[pix]
        face = torch.full((h * w,), _MAX_KEY, dtype=torch.int64, device=dev)
        face.scatter_reduce_(0, pix[win], tid[win], reduce="amin")
        out.append(torch.where(face == _MAX_KEY, torch.full_like(face, -1), face).view(h, w))
    return torch.stack(out)
