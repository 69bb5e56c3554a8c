"""Renderer core: camera, rasteriser (fast vs reference), barycentrics, gradients, SH shading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stylerig_engine.render.cameras import PerspectiveCamera, ffhq_alignment, portrait_camera
from stylerig_engine.render.rasterizer import (
    MeshRasterizer,
    barycentrics,
    interpolate,
    visibility,
    visibility_reference,
)
from stylerig_engine.render.rasterizer_naive import visibility_naive
from stylerig_engine.render.renderer import MeshRenderer
from stylerig_engine.render.shading import (
    C1,
    SHShader,
    linear_to_srgb,
    sh_basis,
    sh_directional,
    sh_shade,
    srgb_to_linear,
    vertex_normals,
)
from stylerig_engine.render.synthetic import toy_head


def random_mesh(seed, *, batch=1, nv=40, nt=60, size=(24, 32), spread=1.3):
    """Random screen-space triangles, some partly off-screen, some crossing the near plane."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    xy = (torch.rand(batch, nv, 2, generator=g) * spread - (spread - 1) / 2) * torch.tensor([w, h])
    z = 0.5 + 4 * torch.rand(batch, nv, 1, generator=g)
    faces = torch.randint(0, nv, (nt, 3), generator=g)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    return torch.cat([xy, z], -1), faces


def quad_mesh(depth=10.0, size=8.0):
    """A square facing the camera (+Z), counter-clockwise seen from +Z, centred on the axis."""
    s = size / 2
    v = torch.tensor([[-s, -s, 0], [s, -s, 0], [s, s, 0], [-s, s, 0]], dtype=torch.float64)
    v[:, 2] = 50.0 - depth
    return v, torch.tensor([[0, 1, 2], [0, 2, 3]])


# ---- camera ------------------------------------------------------------------------------------------
def test_camera_projection_conventions():
    cam = PerspectiveCamera(image_size=100, focal=2.0, position=(0.0, 0.0, 50.0))
    pts = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 10.0]]])
    s = cam.project(pts)[0]
    assert s[0].tolist() == pytest.approx([49.5, 49.5, 50.0])  # the axis hits the image centre
    assert s[1, 0] > 49.5 and s[1, 1] == pytest.approx(49.5)  # +X (subject's left) -> viewer's right
    assert s[2, 1] < 49.5  # +Y up -> smaller row
    assert s[1, 0] - 49.5 == pytest.approx(200.0 / 50.0)  # f = focal * size pixels
    assert s[3, 2] == pytest.approx(40.0)  # closer to the camera: smaller depth
    back = cam.unproject(s[:, :2], s[:, 2])
    assert torch.allclose(back, pts[0], atol=1e-5)
    assert cam.with_size(200).focal_px == 2 * cam.focal_px
    assert cam.fov_degrees == pytest.approx(math.degrees(2 * math.atan(0.25)))


def test_portrait_camera_matches_ffhq_alignment():
    model = toy_head()
    lm3 = model.neutral[model.landmarks]
    for size in (64, 256):
        cam = portrait_camera(lm3, size)
        xy = cam.project(torch.as_tensor(lm3)[None].double())[0, :, :2].numpy()
        centre, side = ffhq_alignment(xy)
        assert np.allclose(centre, cam.principal_point, atol=1e-3 * size)
        assert side == pytest.approx(size, rel=1e-3)
        eyes_y = xy[36:48, 1].mean() / size
        assert 0.4 < eyes_y < 0.5
        assert xy[16, 0] > xy[0, 0]  # not mirrored: subject's left jaw on the viewer's right


# ---- rasteriser ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cull", [True, False])
def test_fast_rasteriser_equals_reference(seed, cull):
    screen, faces = random_mesh(seed, batch=2)
    ref = visibility_reference(screen, faces, (24, 32), cull_backfaces=cull, near=1.0)
    fast = visibility(screen, faces, (24, 32), cull_backfaces=cull, near=1.0)
    naive = visibility_naive(screen, faces, (24, 32), cull_backfaces=cull, near=1.0)
    assert (ref >= 0).sum() > 50  # the test means something
    assert torch.equal(fast, ref)
    assert torch.equal(naive, ref)
    # Chunking (tiny max_candidates) does not change the answer.
    assert torch.equal(visibility(screen, faces, (24, 32), cull_backfaces=cull, near=1.0, max_candidates=7), ref)


def test_large_batches_are_rasterised_in_groups_with_the_same_result():
    screen, faces = random_mesh(7, batch=5, size=(300, 300), nt=80)  # 300^2 pixels: groups of 2 images
    whole = visibility(screen, faces, (300, 300))
    assert (whole >= 0).sum() > 1000
    for b in range(5):
        assert torch.equal(whole[b], visibility(screen[b:b + 1], faces, (300, 300))[0])


def test_fast_rasteriser_equals_reference_on_a_head_mesh():
    model = toy_head(12, 16)
    cam = portrait_camera(model.neutral[model.landmarks], 40)
    from stylerig_engine.params import rotation_matrix

    verts = torch.as_tensor(model.neutral)[None] @ rotation_matrix(torch.tensor([[0.2, 0.7, 0.1]])).transpose(1, 2)
    screen = cam.project(verts)
    faces = torch.as_tensor(model.triangles).long()
    for cull in (True, False):
        ref = visibility_reference(screen, faces, (40, 40), cull_backfaces=cull)
        assert torch.equal(visibility(screen, faces, (40, 40), cull_backfaces=cull), ref)
    # A closed mesh: the z-buffer alone hides the back, so culling does not change the image.
    assert torch.equal(visibility(screen, faces, (40, 40), cull_backfaces=False),
                       visibility(screen, faces, (40, 40), cull_backfaces=True))


def test_nearer_triangle_wins_whatever_the_order():
    # Two overlapping triangles covering the image centre, at depths 5 and 9.
    tri = torch.tensor([[2.0, 2.0], [2.0, 30.0], [30.0, 2.0]])  # y-down clockwise = front-facing
    near = torch.cat([tri, torch.full((3, 1), 5.0)], -1)
    far = torch.cat([tri + 1.0, torch.full((3, 1), 9.0)], -1)
    for first, second, expect in ((near, far, 0), (far, near, 1)):
        screen = torch.cat([first, second])[None]
        faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
        for backend in ("torch", "reference", "naive"):
            frag = MeshRasterizer((32, 32), backend=backend)(screen, faces)
            assert frag.pix_to_face[0, 10, 10] == expect, backend
            assert frag.zbuf[0, 10, 10] == pytest.approx(5.0)


def test_backface_culling_and_coverage_rule():
    # Clockwise on screen (y down) = counter-clockwise seen from the camera = front-facing.
    front = torch.tensor([[[0.0, 0.0, 5.0], [0.0, 4.0, 5.0], [4.0, 0.0, 5.0]]])
    faces = torch.tensor([[0, 1, 2]])
    f = visibility(front, faces, (6, 6))
    # Pixel centres on or inside the triangle x + y <= 4, x, y >= 0 are covered.
    ys, xs = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    assert torch.equal(f[0] == 0, (xs + ys <= 4))
    assert (visibility(front, faces[:, [0, 2, 1]], (6, 6)) == -1).all()
    assert (visibility(front, faces[:, [0, 2, 1]], (6, 6), cull_backfaces=False) == 0).sum() == 15


def test_screen_space_barycentrics_reproduce_the_pixel_centre():
    screen, faces = random_mesh(3)
    frag = MeshRasterizer((24, 32), perspective_correct=False, near=1.0)(screen, faces)
    xy = interpolate(screen[..., :2], frag)
    h, w = frag.image_size
    rows, cols = frag.pixels // w % h, frag.pixels % w
    assert torch.allclose(xy, torch.stack([cols, rows], -1).float(), atol=1e-3)
    assert (frag.bary_packed > -1e-4).all() and torch.allclose(frag.bary_packed.sum(-1), torch.ones(1), atol=1e-5)


def test_perspective_correct_barycentrics_interpolate_3d_points():
    cam = PerspectiveCamera(image_size=48, focal=1.5, position=(0.0, 0.0, 30.0))
    # A strongly slanted quad: perspective-correct interpolation of 3D positions lands on the pixel ray.
    v = torch.tensor([[[-6.0, -6.0, -10.0], [6.0, -6.0, 10.0], [6.0, 6.0, 10.0], [-6.0, 6.0, -10.0]]],
                     dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    screen = cam.project(v)
    frag = MeshRasterizer(48)(screen, faces)
    p = interpolate(v, frag)  # (N, 3) world points
    back = cam.project(p[None])[0]
    h, w = frag.image_size
    rows, cols = frag.pixels // w % h, frag.pixels % w
    assert frag.pixels.numel() > 300
    assert torch.allclose(back[:, 0], cols.double(), atol=1e-6)
    assert torch.allclose(back[:, 1], rows.double(), atol=1e-6)
    assert torch.allclose(back[:, 2], frag.zbuf_packed, atol=1e-6)  # zbuf = true depth of the surface
    # Screen-space barycentrics would be off the ray on this slanted quad.
    flat = MeshRasterizer(48, perspective_correct=False)(screen, faces)
    off = cam.project(interpolate(v, flat)[None])[0]
    assert (off[:, 0] - cols.double()).abs().max() > 0.05


def test_gradcheck_barycentric_pass():
    """Visibility fixed, the barycentric pass + interpolation is smooth: exact gradients (float64)."""
    cam = PerspectiveCamera(image_size=12, focal=1.8, position=(0.0, 0.0, 20.0))
    verts = torch.tensor([[[-5.0, -4.0, 1.0], [5.0, -5.0, -1.0], [4.0, 5.0, 0.5], [-5.0, 5.0, 2.0]]],
                         dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    colours = torch.rand(1, 4, 3, dtype=torch.float64)
    pix = visibility(cam.project(verts), faces, (12, 12))
    assert (pix >= 0).sum() > 40

    def f(v, c):
        frag = barycentrics(cam.project(v), faces, pix)
        return interpolate(c, frag), frag.zbuf_packed

    assert torch.autograd.gradcheck(f, (verts.clone().requires_grad_(), colours.clone().requires_grad_()))


def test_full_renderer_matches_finite_differences_away_from_edges():
    """Directional derivatives of a smooth loss of the rendered image (vertex positions, colours, light)
    agree with central differences whenever the perturbation does not change visibility."""
    model = toy_head(10, 14)
    cam = portrait_camera(model.neutral[model.landmarks], 24)
    renderer = MeshRenderer(cam)
    faces = torch.as_tensor(model.triangles).long()
    g = torch.Generator().manual_seed(0)
    v0 = torch.as_tensor(model.neutral, dtype=torch.float64)[None]
    a0 = torch.rand(1, v0.shape[1], 3, generator=g, dtype=torch.float64)
    sh0 = sh_directional([0.3, 0.4, 1.0], intensity=0.7, ambient=0.3, dtype=torch.float64)[None]
    weights = torch.rand(1, 3, 24, 24, generator=g, dtype=torch.float64)

    def loss(v, a, sh):
        out = renderer(v, faces, albedo=a, sh=sh)
        return (weights * out.image).sum() + 0.01 * (out.depth * out.mask).sum(), out.fragments.pix_to_face

    v, a, sh = (t.clone().requires_grad_() for t in (v0, a0, sh0))
    val, pix = loss(v, a, sh)
    val.backward()
    eps = 1e-5
    checked = 0
    for _ in range(6):
        dv = torch.randn(v0.shape, generator=g, dtype=torch.float64)
        da = torch.randn(a0.shape, generator=g, dtype=torch.float64)
        ds = torch.randn(sh0.shape, generator=g, dtype=torch.float64)
        lp, pp = loss(v0 + eps * dv, a0 + eps * da, sh0 + eps * ds)
        lm, pm = loss(v0 - eps * dv, a0 - eps * da, sh0 - eps * ds)
        if not (torch.equal(pp, pix) and torch.equal(pm, pix)):
            continue
        fd = (lp - lm) / (2 * eps)
        an = (v.grad * dv).sum() + (a.grad * da).sum() + (sh.grad * ds).sum()
        assert float(an) == pytest.approx(float(fd), rel=1e-5, abs=1e-7)
        checked += 1
    assert checked >= 4
    assert v.grad.abs().sum() > 0 and a.grad.abs().sum() > 0 and sh.grad.abs().sum() > 0


def test_vertex_normals_point_outwards_and_are_differentiable():
    model = toy_head(nose=0.0)
    v = torch.as_tensor(model.neutral)[None].double().requires_grad_()
    n = vertex_normals(v, torch.as_tensor(model.triangles))
    assert torch.allclose(n.norm(dim=-1), torch.ones(1, dtype=torch.float64))
    assert ((n * v).sum(-1) > 0).all()  # an ellipsoid around the origin: outward = away from the centre
    n[0, :, 0].sum().backward()
    assert v.grad.abs().sum() > 0


# ---- shading -------------------------------------------------------------------------------------------
def test_sh_basis_convention():
    n = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    h = sh_basis(n)
    assert torch.allclose(h[:, 0], torch.ones(3))
    assert h[0, 2] == pytest.approx(C1) and h[1, 3] == pytest.approx(C1) and h[2, 1] == pytest.approx(C1)
    a0_y0, a1_y1 = math.pi * 0.5 / math.sqrt(math.pi), (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi))
    assert a1_y1 / a0_y0 == pytest.approx(C1)
    # A directional light reproduces max(n.d, 0) to second order: 1.0625 facing it, 0.0625 facing away.
    d = torch.tensor([0.3, -0.5, 0.8])
    d = d / d.norm()
    gamma = sh_directional(d, intensity=2.0).view(9, 3)
    assert sh_shade(d, gamma)[0] == pytest.approx(2.0 * 1.0625, rel=1e-5)
    assert sh_shade(-d, gamma)[0] == pytest.approx(2.0 * 0.0625, abs=1e-5)
    # ... and Monte-Carlo irradiance of a clamped cosine agrees with it away from the terminator.
    g = torch.Generator().manual_seed(1)
    dirs = torch.nn.functional.normalize(torch.randn(200, 3, generator=g), dim=-1)
    ideal = 2.0 * (dirs @ d).clamp(min=0)
    assert (sh_shade(dirs, gamma)[:, 0] - ideal).abs().max() < 0.25


def test_srgb_round_trip():
    x = torch.linspace(0, 1, 101)
    assert torch.allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-5)
    assert linear_to_srgb(torch.tensor(0.214)).item() == pytest.approx(0.5, abs=0.01)


def _sphere_render(sh, albedo=0.6, size=48, **kw):
    model = toy_head(nose=0.0)
    cam = portrait_camera(model.neutral[model.landmarks], size)
    v = torch.as_tensor(model.neutral)[None]
    alb = torch.full_like(v, albedo)
    return MeshRenderer(cam, **kw)(v, torch.as_tensor(model.triangles).long(), albedo=alb, sh=sh)


def test_ambient_only_light_gives_albedo_times_gamma0():
    sh = torch.zeros(1, 27)
    sh[0, :3] = torch.tensor([0.9, 0.5, 0.25])
    out = _sphere_render(sh)
    m = out.mask[0, 0] > 0
    assert m.sum() > 300
    for c, g0 in enumerate((0.9, 0.5, 0.25)):
        assert torch.allclose(out.image[0, c][m], torch.tensor(0.6 * g0), atol=1e-6)
    assert (out.image[0][:, ~m] == 0).all()


def test_directional_light_brightens_the_side_facing_it():
    for direction, brighter in (((1.0, 0.0, 0.3), "right"), ((-1.0, 0.0, 0.3), "left")):
        out = _sphere_render(sh_directional(direction, intensity=1.0, ambient=0.1)[None])
        img, m = out.image[0, 0], out.mask[0, 0] > 0
        w = img.shape[-1]
        left = img[:, : w // 2][m[:, : w // 2]].mean()
        right = img[:, w // 2:][m[:, w // 2:]].mean()
        assert (right > 1.5 * left) if brighter == "right" else (left > 1.5 * right)
    # Light from above: the upper half is brighter.
    out = _sphere_render(sh_directional((0.0, 1.0, 0.3), intensity=1.0, ambient=0.1)[None])
    img, m = out.image[0, 0], out.mask[0, 0] > 0
    h = img.shape[0]
    assert img[: h // 2][m[: h // 2]].mean() > 1.5 * img[h // 2:][m[h // 2:]].mean()


def test_shader_is_swappable():
    from stylerig_engine.render.shading import AlbedoShader, NormalShader

    sh = torch.zeros(1, 27)
    a = _sphere_render(sh, shader=AlbedoShader())
    assert torch.allclose(a.image[0][:, a.mask[0, 0] > 0], torch.tensor(0.6))
    n = _sphere_render(sh, shader=NormalShader())
    # Normals towards +X (viewer's right) on the right of the sphere: red channel grows to the right.
    row = n.image[0, 0, 24][n.mask[0, 0, 24] > 0]
    assert row[-1] > row[0]


def test_shader_default_uses_sh():
    assert isinstance(MeshRenderer(PerspectiveCamera(8)).shader, SHShader)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    screen, faces = random_mesh(1, batch=2)
    cpu = MeshRasterizer((24, 32), near=1.0)(screen, faces)
    gpu = MeshRasterizer((24, 32), near=1.0)(screen.cuda(), faces.cuda())
    assert torch.equal(gpu.pix_to_face.cpu(), cpu.pix_to_face)
    assert torch.allclose(gpu.bary_packed.cpu(), cpu.bary_packed, atol=1e-5)
