"""Triangle rasteriser: z-buffered visibility plus differentiable barycentrics, pure PyTorch (CPU and CUDA).

Two passes, the standard split of differentiable rasterisers (PyTorch3D, nvdiffrast, tf_mesh_renderer):

1. Visibility (no gradient): which triangle is nearest at each pixel centre. Backends:
   * "torch" (default, fast): back-facing / off-screen / near-plane triangles are culled, every remaining
     triangle enumerates only the pixel centres inside its own bounding box (exact, unpadded, in one
     flat vectorised list, so the many sub-pixel triangles of a dense face mesh cost one candidate or
     none; single-candidate triangles skip the enumeration), the inside test runs on all candidates at
     once, and the z-buffer is resolved by a single `scatter_reduce(amin)` over int64 keys that pack
     (float32 bits of 1/depth, triangle id) -- see `_keys`.
   * "reference": obviously correct and slow; a Python loop over triangles, each tested against every
     pixel, keeping the nearer. Use it on small meshes to validate the fast path.
   * "naive": the vectorised bounding-box rasteriser this project started from (every triangle padded to
     the largest bounding box, no culling, two-step z-buffer), in rasterizer_naive.py: the benchmark
     baseline only.
   All three use the same triangle set-up, inside test and depth comparison, so they agree pixel for
   pixel (ties in depth go to the lower triangle id in all three).
2. Barycentrics (differentiable): for the covered pixels only, the barycentric coordinates of the pixel
   centre are recomputed from the projected vertices of the visible triangle with ordinary autograd ops,
   so gradients flow to vertex positions and, through interpolation, to any vertex attribute. Visibility
   changes (silhouettes, occlusion boundaries) are not differentiated -- as in any hard rasteriser.

Coverage rule: a pixel is covered when its centre (x, y) = (column, row) lies inside the triangle or on
its boundary (see cameras.py for the pixel convention). There is no anti-aliasing: the mask is binary.

Barycentrics are perspective-correct by default: with screen-space barycentrics l_i and vertex depths z_i,
b_i = (l_i / z_i) / sum_j (l_j / z_j), and the depth is 1 / sum_j (l_j / z_j) (exact for a planar
triangle under a pinhole camera). `perspective_correct=False` returns the screen-space l_i instead (depth
then is sum_i l_i z_i).

Orientation: with y pointing down, a triangle that is counter-clockwise seen from the camera has a
*negative* signed screen area (x1-x0)(y2-y0) - (x2-x0)(y1-y0); model triangles are counter-clockwise seen
from outside, so front faces have negative area and `cull_backfaces` drops the rest.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

BACKENDS = ("torch", "reference", "naive")
_MAX_KEY = torch.iinfo(torch.int64).max
_MIN_AREA = 1e-10  # squared pixels; smaller triangles are degenerate and never drawn


@dataclass
class Fragments:
    """What the rasteriser hands to shaders. Covered pixels are also kept "packed" (one entry per covered
    pixel, ordered by flat pixel index) so that shaders only touch covered pixels. Per-corner data is
    stored planar -- (3, N), one contiguous row per triangle corner -- because 1-D gathers and scatters
    are much faster on CPU than gathers of short rows; `vertex_ids` and `bary_packed` are (N, 3) views.

    Fields:
      pix_to_face: (B, H, W) int64, index of the visible triangle into `faces`, -1 for background.
      pixels: (N,) int64, flat index b * H * W + row * W + column of each covered pixel.
      faces: (N,) int64, visible triangle of each covered pixel (= pix_to_face.view(-1)[pixels]).
      corner_ids: (3, N) int64, flat indices b * V + v of that triangle's three vertices, for gathering
        from (B * V,) vertex attributes.
      bary_planar: (3, N) barycentrics of the pixel centre w.r.t. those corners (differentiable).
      zbuf_packed: (N,) depth in centimetres at the pixel centre (differentiable).
      image_size: (H, W).
    """

    pix_to_face: torch.Tensor
    pixels: torch.Tensor
    faces: torch.Tensor
    corner_ids: torch.Tensor
    bary_planar: torch.Tensor
    zbuf_packed: torch.Tensor
    image_size: tuple[int, int]

    @property
    def batch_size(self) -> int:
        return int(self.pix_to_face.shape[0])

    @staticmethod
    def cat(parts: list[Fragments], *, num_vertices: int) -> Fragments:
        """Concatenate the fragments of consecutive batch chunks (each rendered with `num_vertices`
        vertices per mesh) into the fragments of the whole batch."""
        h, w = parts[0].image_size
        pixels, corners, b0 = [], [], 0
        for f in parts:
            pixels.append(f.pixels + b0 * h * w)
            corners.append(f.corner_ids + b0 * num_vertices)
            b0 += f.batch_size
        return Fragments(pix_to_face=torch.cat([f.pix_to_face for f in parts]), pixels=torch.cat(pixels),
                         faces=torch.cat([f.faces for f in parts]), corner_ids=torch.cat(corners, 1),
                         bary_planar=torch.cat([f.bary_planar for f in parts], 1),
                         zbuf_packed=torch.cat([f.zbuf_packed for f in parts]), image_size=(h, w))

    @property
    def num_pixels(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def vertex_ids(self) -> torch.Tensor:
        """(N, 3) view of corner_ids."""
        return self.corner_ids.t()

    @property
    def bary_packed(self) -> torch.Tensor:
        """(N, 3) view of bary_planar."""
        return self.bary_planar.t()

    @property
    def batch_index(self) -> torch.Tensor:
        """(N,) batch element of each covered pixel."""
        h, w = self.image_size
        return torch.div(self.pixels, h * w, rounding_mode="floor")

    def to_dense(self, values: torch.Tensor, background: float | torch.Tensor = 0.0) -> torch.Tensor:
        """Per-covered-pixel values -> (B, C, H, W) with `background` elsewhere. Differentiable.

        Keyword args:
          values: (N, C); a transposed view of a contiguous (C, N) tensor (what `interpolate` and the
            shaders return) costs no copy.
          background: a number, or a tensor broadcastable to (B, C, H, W).
        """
        h, w = self.image_size
        b = self.batch_size
        if values.ndim != 2 or values.shape[0] != self.num_pixels:
            raise ValueError(f"values must be (N={self.num_pixels}, C), got {tuple(values.shape)}")
        c = values.shape[1]
        bi = self.batch_index
        hw = self.pixels - bi * (h * w)
        idx = ((bi * c)[None, :] + torch.arange(c, device=bi.device)[:, None]) * (h * w) + hw[None, :]
        if isinstance(background, torch.Tensor):
            out = background.to(values.dtype).expand(b, c, h, w).reshape(-1)  # index_put below copies
        else:
            out = values.new_full((b * c * h * w,), float(background))
        out = out.index_put((idx.view(-1),), values.t().reshape(-1))
        return out.view(b, c, h, w)

    @property
    def mask(self) -> torch.Tensor:
        """(B, 1, H, W) float, 1 where a triangle covers the pixel centre."""
        return (self.pix_to_face >= 0).unsqueeze(1).to(self.bary_planar.dtype)

    @property
    def bary(self) -> torch.Tensor:
        """(B, H, W, 3) dense barycentrics, 0 on background."""
        return self.to_dense(self.bary_packed).permute(0, 2, 3, 1)

    @property
    def zbuf(self) -> torch.Tensor:
        """(B, H, W) dense depth, 0 on background."""
        return self.to_dense(self.zbuf_packed[:, None])[:, 0]


def interpolate_planar(values: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Like `interpolate` but returns (C, N), one contiguous row per channel (what shaders use)."""
    if values.ndim != 3:
        raise ValueError(f"values must be (B, V, C), got {tuple(values.shape)}")
    c = values.shape[-1]
    planar = values.permute(2, 0, 1).reshape(c, -1)  # (C, B V)
    bary = fragments.bary_planar.to(values.dtype)
    ids = fragments.corner_ids
    rows = []
    for ch in range(c):
        src = planar[ch]
        rows.append(src.index_select(0, ids[0]) * bary[0] + src.index_select(0, ids[1]) * bary[1]
                    + src.index_select(0, ids[2]) * bary[2])
    return torch.stack(rows)


def interpolate(values: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Barycentric interpolation of per-vertex values at the covered pixels.

    Keyword args:
      values: (B, V, C) per-vertex attributes (colours, normals, ...), any float dtype.
      fragments: from the rasteriser that drew the same (B, V) vertices.
    Returns (N, C), one row per covered pixel (a transposed view of a (C, N) tensor; see
    Fragments.to_dense). Differentiable in both.
    """
    return interpolate_planar(values, fragments).t()


def _take(rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """rows (R, M), idx (n,) -> (R, n) = rows[:, idx], one 1-D gather per row (several times faster on
    CPU than index_select along dim 1). Not differentiable (the visibility pass only)."""
    out = rows.new_empty((rows.shape[0], idx.numel()))
    for r in range(rows.shape[0]):
        torch.index_select(rows[r], 0, idx, out=out[r])
    return out


# ---- triangle set-up shared by every backend --------------------------------------------------------
_INDEX_CACHE: dict = {}


def _corner_index(faces: torch.Tensor, bsz: int, nv: int, *, coords: bool = False) -> torch.Tensor:
    """Flat vertex indices of every triangle corner, cached (a mesh's faces rarely change, and this index
    is as big as the mesh times the batch).

    coords=False: (3 B T,) with b * V + faces[t, k] at position (k * B + b) * T + t, for gathering from a
      (C, B V) planar array.
    coords=True: (3, 3, B T), [k, c] = c * B V + b * V + faces[t, k], for gathering from a flat (3 B V,)
      planar array (coordinate c of corner k).
    """
    # The entry keeps `faces` alive, so its id and address cannot be reused by another tensor meanwhile.
    key = (id(faces), faces.data_ptr(), faces._version, tuple(faces.shape), faces.device, bsz, nv, coords)
    entry = _INDEX_CACHE.get(key)
    idx = entry[1] if entry is not None and entry[0] is faces else None
    if idx is None:
        if coords:
            per = _corner_index(faces, bsz, nv).view(3, 1, -1)
            idx = (per + torch.arange(3, device=faces.device).view(1, 3, 1) * (bsz * nv)).contiguous()
        else:
            f = faces.long().t()  # (3, T)
            idx = (f[:, None, :] + torch.arange(bsz, device=faces.device)[None, :, None] * nv).reshape(-1)
        while len(_INDEX_CACHE) >= 6:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        _INDEX_CACHE[key] = (faces, idx)
    return idx


def _corners(screen: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) vertices, (T, 3) faces -> (9, B T): rows x0, x1, x2, y0, y1, y2, z0, z1, z2 (corner k of
    triangle t of batch element b in column b * T + t)."""
    bsz, nv, _ = screen.shape
    flat = screen.detach().permute(2, 0, 1).reshape(3, bsz * nv)
    return _take(flat, _corner_index(faces, bsz, nv)).view(9, -1)


def _cull_and_bound(p, h: int, w: int, *, cull_backfaces: bool, near: float):
    """From the 9 corner coordinates (tensors of any one shape): the integer bounding box (of pixel
    centres, clipped to the image) of each triangle, bx, by, nx, ny (int64), with nx * ny = 0 for
    triangles that are not drawn (back-facing if culled, degenerate, crossing the near plane, not finite)."""
    x0, x1, x2, y0, y1, y2, z0, z1, z2 = p
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    ok = (z0 > near) & (z1 > near) & (z2 > near) & (area.abs() >= _MIN_AREA) & torch.isfinite(area)
    if cull_backfaces:
        ok &= area < 0
    xa = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2)).clamp_(0, w)
    xb = torch.floor(torch.maximum(torch.maximum(x0, x1), x2)).clamp_(-1, w - 1)
    ya = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2)).clamp_(0, h)
    yb = torch.floor(torch.maximum(torch.maximum(y0, y1), y2)).clamp_(-1, h - 1)
    nx = torch.where(ok, (xb - xa + 1).clamp_(min=0), torch.zeros_like(xa)).long()
    ny = (yb - ya + 1).clamp_(min=0).long()
    return xa.long(), ya.long(), nx, ny


def _coefficients(p: torch.Tensor, bx: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
    """(9, n) corners and each triangle's bounding-box origin (bx, by) -> (12, n) plane coefficients
    (a_0..a_3, b_0..b_3, c_0..c_3) such that at the pixel centre (bx + col, by + row),
    lambda_i = c_i + a_i * col + b_i * row for the three screen-space barycentrics (i = 0, 1, 2) and
    1/depth (i = 3). Relative to the box origin so that the evaluation stays accurate for small
    triangles in large images."""
    x0, x1, x2, y0, y1, y2, z0, z1, z2 = p
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    inv = 1.0 / torch.where(area.abs() < _MIN_AREA, torch.ones_like(area), area)
    fx, fy = bx.to(p.dtype), by.to(p.dtype)
    a, b, c = [], [], []
    for xj, yj, xk, yk in ((x1, y1, x2, y2), (x2, y2, x0, y0), (x0, y0, x1, y1)):
        dx, dy = (xk - xj) * inv, (yk - yj) * inv
        a.append(-dy)
        b.append(dx)
        c.append(dx * (fy - yj) - dy * (fx - xj))
    iz = (1.0 / z0, 1.0 / z1, 1.0 / z2)
    for row in (a, b, c):
        row.append(row[0] * iz[0] + row[1] * iz[1] + row[2] * iz[2])
    return torch.stack(a + b + c)


# Depth keys: 1/depth > 0 is a positive float32 whose bit pattern grows with it; (INF_BITS - bits) << 32
# is then an int64 that is smallest for the nearest surface, with the triangle id in the low 32 bits, so
# one scatter_reduce(amin) resolves the z-buffer and remembers the winner.
_INF_BITS = 0x7F800000


def _keys(coef: torch.Tensor, col, row, tid: torch.Tensor) -> torch.Tensor:
    """(12, n) coefficients at n candidates -> (n,) int64 z-buffer keys (_MAX_KEY when outside)."""
    coef = coef.view(3, 4, *coef.shape[1:])
    lam = coef[2]
    if col is not None:
        lam = lam + coef[0] * col + coef[1] * row
    inside = (lam[0] >= 0) & (lam[1] >= 0) & (lam[2] >= 0)
    invz = lam[3].float().clamp(min=1e-30)
    key = ((_INF_BITS - invz.view(torch.int32)).long() << 32) | tid
    return torch.where(inside, key, torch.full_like(key, _MAX_KEY))


def _check(screen: torch.Tensor, faces: torch.Tensor) -> None:
    if screen.ndim != 3 or screen.shape[-1] != 3:
        raise ValueError(f"screen vertices must be (B, V, 3) (x_px, y_px, depth), got {tuple(screen.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3 or faces.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"faces must be (T, 3) int32/int64, got {tuple(faces.shape)} {faces.dtype}")
    if faces.shape[0] >= 1 << 31:
        raise ValueError(f"too many triangles: {faces.shape[0]}")


def _decode(zbuf: torch.Tensor) -> torch.Tensor:
    face = zbuf & 0xFFFFFFFF
    return torch.where(zbuf == _MAX_KEY, torch.full_like(face, -1), face)


# ---- visibility backends ----------------------------------------------------------------------------
@torch.no_grad()
def visibility(screen: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], *,
               cull_backfaces: bool = True, near: float = 1e-3, max_candidates: int = 1 << 22) -> torch.Tensor:
    """Fast z-buffered visibility: (B, V, 3) screen vertices, (T, 3) faces -> (B, H, W) int64 face ids.

    Keyword args:
      screen: (x_px, y_px, depth) per vertex, as from PerspectiveCamera.project.
      faces: (T, 3) vertex indices.
      image_size: (H, W).
      cull_backfaces: skip triangles that face away from the camera.
      near: skip triangles with a vertex at depth <= near.
      max_candidates: process at most this many (pixel, triangle) candidates at once (bounds memory to
        roughly 100 bytes per candidate).
    """
    _check(screen, faces)
    h, w = image_size
    bsz = screen.shape[0]
    nt = faces.shape[0]
    dev = screen.device
    # A few images at a time: per-image work is the same, and small working sets stay in cache (a batch
    # of 32 ICT faces at once is ~3x slower per image on CPU than groups of a few).
    group = max(1, min((1 << 18) // max(h * w, 1), (1 << 18) // max(nt, 1)))
    if bsz > group:
        return torch.cat([visibility(screen[s:s + group], faces, image_size, cull_backfaces=cull_backfaces,
                                     near=near, max_candidates=max_candidates) for s in range(0, bsz, group)])
    p = _corners(screen, faces)
    bx, by, nx, ny = _cull_and_bound(p, h, w, cull_backfaces=cull_backfaces, near=near)
    count = nx * ny
    zbuf = torch.full((bsz * h * w,), _MAX_KEY, dtype=torch.int64, device=dev)
    sel = torch.nonzero(count).squeeze(1)  # b * T + t of the triangles that may cover a pixel centre
    if sel.numel() == 0:
        return _decode(zbuf).view(bsz, h, w)
    bx, by, nx, count = (a.index_select(0, sel) for a in (bx, by, nx, count))
    b = torch.div(sel, nt, rounding_mode="floor")
    tid = sel - b * nt
    base = (b * h + by) * w + bx  # flat pixel index of each bounding box's first pixel centre
    coef = _coefficients(_take(p, sel), bx, by)  # (12, n)

    # Triangles whose box holds a single pixel centre (most of a dense mesh at low resolution): one
    # candidate each, evaluated in place.
    one = count == 1
    if bool(one.any()):
        i1 = torch.nonzero(one).squeeze(1)
        zbuf.scatter_reduce_(0, base.index_select(0, i1),
                             _keys(_take(coef, i1), None, None, tid.index_select(0, i1)), reduce="amin")
    # The others enumerate the pixel centres of their boxes in one flat list, chunked to bound memory.
    im = torch.nonzero(~one).squeeze(1)
    if im.numel() == 0:
        return _decode(zbuf).view(bsz, h, w)
    cnt = count.index_select(0, im)
    ends = torch.cumsum(cnt, 0)
    total = int(ends[-1])
    bounds = [0]
    if total > max_candidates:  # a single huge triangle may exceed the bound alone; it gets its own chunk
        cuts = torch.arange(max_candidates, total, max_candidates, device=dev)
        bounds += sorted(set(torch.searchsorted(ends, cuts, right=True).tolist()) - {0, im.numel()})
    bounds.append(im.numel())
    for s, e in itertools.pairwise(bounds):
        ids = im[s:e]
        c = cnt[s:e]
        n = int(c.sum())
        owner = torch.repeat_interleave(torch.arange(e - s, device=dev), c, output_size=n)
        first = torch.cumsum(c, 0) - c
        k = torch.arange(n, device=dev) - first.index_select(0, owner)
        gid = ids.index_select(0, owner)
        nxo = nx.index_select(0, gid)
        row = torch.div(k, nxo, rounding_mode="floor")
        col = k - row * nxo
        key = _keys(_take(coef, gid), col.to(coef.dtype), row.to(coef.dtype), tid.index_select(0, gid))
        zbuf.scatter_reduce_(0, base.index_select(0, gid) + row * w + col, key, reduce="amin")
    return _decode(zbuf).view(bsz, h, w)


@torch.no_grad()
def visibility_reference(screen: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], *,
                         cull_backfaces: bool = True, near: float = 1e-3) -> torch.Tensor:
    """Plain reference: loop over triangles, test every pixel of the image, keep the nearer (ties: the
    lower id). Uses the same inside test and depth as the fast path. Slow: small meshes only."""
    _check(screen, faces)
    h, w = image_size
    bsz, nt = screen.shape[0], faces.shape[0]
    p = _corners(screen, faces)
    bx, by, nx, ny = _cull_and_bound(p, h, w, cull_backfaces=cull_backfaces, near=near)
    coef = _coefficients(p, bx, by).view(12, bsz, nt)
    drawn = (nx * ny > 0).view(bsz, nt)
    bx, by = bx.view(bsz, nt), by.view(bsz, nt)
    py, px = torch.meshgrid(torch.arange(h, device=screen.device), torch.arange(w, device=screen.device),
                            indexing="ij")
    out = torch.full((bsz, h, w), -1, dtype=torch.int64, device=screen.device)
    for b in range(bsz):
        best = torch.full((h, w), _MAX_KEY, dtype=torch.int64, device=screen.device)
        for t in range(nt):
            if not drawn[b, t]:
                continue
            col = (px - bx[b, t]).to(coef.dtype)
            row = (py - by[b, t]).to(coef.dtype)
            cf = coef[:, b, t, None, None].expand(12, h, w)
            key = _keys(cf, col, row, torch.tensor(t, device=screen.device))
            win = key < best
            best = torch.where(win, key, best)
            out[b][win] = t
    return out


# ---- the rasteriser ---------------------------------------------------------------------------------
class MeshRasterizer(torch.nn.Module):
    """Screen-space triangles -> Fragments.

    Keyword args:
      image_size: int (square) or (H, W).
      cull_backfaces: do not draw triangles facing away from the camera (faces must be counter-clockwise
        seen from outside, as MorphableModel.triangles are).
      perspective_correct: perspective-correct barycentrics and depth (True) or screen-space (False).
      backend: visibility pass, one of BACKENDS ("torch" fast, "reference" slow and plain, "naive" baseline).
      near: triangles with a vertex at depth <= near (cm) are not drawn; there is no clipping.
      max_candidates: memory bound of the "torch" backend (pixel-triangle candidates per chunk).
    """

    def __init__(self, image_size: int | tuple[int, int], *, cull_backfaces: bool = True,
                 perspective_correct: bool = True, backend: str = "torch", near: float = 1e-3,
                 max_candidates: int = 1 << 23):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown rasteriser backend {backend!r}; choose from {BACKENDS}")
        self.image_size: tuple[int, int] = (
            (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1])))
        self.cull_backfaces = cull_backfaces
        self.perspective_correct = perspective_correct
        self.backend = backend
        self.near = near
        self.max_candidates = max_candidates

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, backend={self.backend!r}, cull_backfaces={self.cull_backfaces}, "
                f"perspective_correct={self.perspective_correct}")

    def forward(self, screen: torch.Tensor, faces: torch.Tensor) -> Fragments:
        """(B, V, 3) (x_px, y_px, depth) vertices and (T, 3) faces -> Fragments."""
        _check(screen, faces)
        kw: dict[str, Any] = {"cull_backfaces": self.cull_backfaces, "near": self.near}
        if self.backend == "torch":
            pix_to_face = visibility(screen, faces, self.image_size, max_candidates=self.max_candidates, **kw)
        elif self.backend == "reference":
            pix_to_face = visibility_reference(screen, faces, self.image_size, **kw)
        else:
            from .rasterizer_naive import visibility_naive

            pix_to_face = visibility_naive(screen, faces, self.image_size, **kw)
        return barycentrics(screen, faces, pix_to_face, perspective_correct=self.perspective_correct)


def barycentrics(screen: torch.Tensor, faces: torch.Tensor, pix_to_face: torch.Tensor, *,
                 perspective_correct: bool = True) -> Fragments:
    """The differentiable pass: barycentrics and depth of every covered pixel centre.

    Keyword args:
      screen: (B, V, 3) (x_px, y_px, depth) vertices; gradients flow back to them.
      faces: (T, 3) vertex indices.
      pix_to_face: (B, H, W) visible triangle per pixel (-1 background), from a visibility pass.
      perspective_correct: see MeshRasterizer.
    """
    _check(screen, faces)
    bsz, nv, _ = screen.shape
    if pix_to_face.ndim != 3 or pix_to_face.shape[0] != bsz:
        raise ValueError(f"pix_to_face must be (B={bsz}, H, W), got {tuple(pix_to_face.shape)}")
    h, w = pix_to_face.shape[1:]
    nt = faces.shape[0]
    flat = pix_to_face.view(-1)
    pixels = torch.nonzero(flat >= 0).squeeze(1)
    face_ids = flat.index_select(0, pixels)
    b = torch.div(pixels, h * w, rounding_mode="floor")
    rem = pixels - b * (h * w)
    row = torch.div(rem, w, rounding_mode="floor")
    px = (rem - row * w).to(screen.dtype)
    py = row.to(screen.dtype)
    # Flat vertex ids of the three corners, (3, N), from the cached (3, B T) corner index.
    corner_rows = _corner_index(faces, bsz, nv).view(3, -1)
    sel = b * nt + face_ids
    corner_ids = torch.stack([corner_rows[k].index_select(0, sel) for k in range(3)])
    sp = screen.permute(2, 0, 1).reshape(3, -1)  # planar (3, B V): x, y, depth rows; differentiable
    x = [sp[0].index_select(0, corner_ids[k]) for k in range(3)]
    y = [sp[1].index_select(0, corner_ids[k]) for k in range(3)]
    z = [sp[2].index_select(0, corner_ids[k]) for k in range(3)]
    # Edge functions w_i = twice the signed area of (pixel, v_j, v_k), (i, j, k) cyclic; w_i / sum(w) are
    # the screen-space barycentrics (sum(w) = twice the triangle's signed area, never 0 for drawn ones).
    wgt = []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        wi = (x[k] - x[j]) * (py - y[j]) - (y[k] - y[j]) * (px - x[j])
        if perspective_correct:  # b_i = (l_i / z_i) / sum_j (l_j / z_j); the triangle area cancels
            wi = wi / z[i]
        wgt.append(wi)
    total = wgt[0] + wgt[1] + wgt[2]
    bary = torch.stack([wi / total for wi in wgt])  # (3, N)
    depth = bary[0] * z[0] + bary[1] * z[1] + bary[2] * z[2]  # = 1 / sum_j (l_j / z_j) if perspective-correct
    return Fragments(pix_to_face=pix_to_face, pixels=pixels, faces=face_ids, corner_ids=corner_ids,
                     bary_planar=bary, zbuf_packed=depth, image_size=(int(h), int(w)))
