"""FaceRenderer glue (parameters -> render) and `stylerig render-faces`, on the synthetic toy head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stylerig_engine.params import layout_for_model
from stylerig_engine.render.face import FaceRenderer
from stylerig_engine.render.shading import sh_directional
from stylerig_engine.render.synthetic import toy_head


@pytest.fixture(scope="module")
def model():
    return toy_head()


@pytest.fixture(scope="module")
def renderer(model):
    return FaceRenderer(model, image_size=64)


def params(renderer, batch=1, *, yaw=0.0, pitch=0.0, light=None, expression=None):
    lay = renderer.layout
    p = renderer.neutral_params(batch)
    p[:, lay.slice("rotation")] = torch.tensor([math.radians(pitch), math.radians(yaw), 0.0])
    if light is not None:
        p[:, lay.slice("illumination")] = light
    for name, w in (expression or {}).items():
        p[:, lay.offset("expression") + renderer.expression_names.index(name)] = w
    return p


def test_outputs_have_documented_shapes(renderer):
    p = params(renderer, 2)
    out = renderer(p)
    assert out.image.shape == (2, 3, 64, 64) and out.mask.shape == (2, 1, 64, 64)
    assert out.depth.shape == (2, 1, 64, 64) and out.landmarks.shape == (2, 68, 2)
    assert set(out.regions) == {"face_skin", "eyes", "head_neck"}
    for m in out.regions.values():
        assert m.shape == (2, 1, 64, 64) and (m <= out.mask).all()
    assert out.regions["face_skin"].sum() > 0.2 * out.mask.sum()
    assert torch.allclose(renderer.landmarks(p), out.landmarks, atol=1e-4)
    with pytest.raises(ValueError):
        renderer(p[:, :-1])


def test_landmarks_fall_on_the_rendered_face(renderer):
    for yaw in (-20.0, 0.0, 20.0):
        out = renderer(params(renderer, yaw=yaw))
        xy = out.landmarks[0].round().long()
        mask = out.mask[0, 0]
        if yaw == 0:  # frontal: every inner landmark (brows, eyes, nose, mouth) is on a covered pixel
            assert mask[xy[17:, 1], xy[17:, 0]].all()
        # The jaw line (and, turned, the brow ends) lie on the silhouette: within a pixel of the face.
        near = torch.nn.functional.max_pool2d(mask[None], 3, 1, 1)[0]
        assert near[xy[:, 1], xy[:, 0]].all(), yaw
    out = renderer(params(renderer))
    nose = out.landmarks[0, 30]
    assert abs(nose[0] - 31.5) < 1.0 and abs(nose[1] - 31.5) < 0.15 * 64
    # Not mirrored: the subject's left eye (42-47) is on the viewer's right.
    assert out.landmarks[0, 42:48, 0].mean() > out.landmarks[0, 36:42, 0].mean()


def test_yaw_turns_the_nose_towards_the_viewers_right(renderer):
    x0 = renderer(params(renderer)).landmarks[0, 30, 0]
    assert renderer(params(renderer, yaw=30)).landmarks[0, 30, 0] > x0 + 3
    assert renderer(params(renderer, yaw=-30)).landmarks[0, 30, 0] < x0 - 3
    assert renderer(params(renderer, pitch=15)).landmarks[0, 30, 1] > renderer(params(renderer)).landmarks[0, 30, 1]


def test_far_side_is_occluded_at_45_degrees(renderer):
    for yaw, far, near in ((45.0, 16, 0), (-45.0, 0, 16)):  # jaw landmarks: 0 subject's right, 16 left
        out = renderer(params(renderer, yaw=yaw))
        screen = out.screen[0, renderer.landmark_ids]
        zbuf = out.depth[0, 0]
        x, y = screen[:, :2].round().long().unbind(-1)
        # The far jaw point lies behind the visible surface; the near one is on it.
        assert screen[far, 2] > zbuf[y[far], x[far]] + 1.0
        assert abs(screen[near, 2] - zbuf[y[near], x[near]]) < 0.5


def test_background_compositing(renderer):
    p = params(renderer, 2)
    plain = renderer(p)
    bg = torch.rand(2, 3, 64, 64)
    out = renderer(p, background=bg)
    m = plain.mask.bool().expand(-1, 3, -1, -1)
    assert torch.equal(out.image[~m], bg[~m])
    assert torch.equal(out.image[m], plain.image[m])
    grey = renderer(p, background=torch.tensor([0.2, 0.3, 0.4]))
    assert torch.allclose(grey.image[:, 2][~plain.mask[:, 0].bool()], torch.tensor(0.4))


def test_batch_equals_single_renders(renderer):
    g = np.random.default_rng(0)
    p = torch.as_tensor(renderer.layout.sample(3, g))
    together = renderer(p)
    for i in range(3):
        alone = renderer(p[i:i + 1])
        assert torch.allclose(alone.image, together.image[i:i + 1], atol=1e-6)
        assert torch.equal(alone.fragments.pix_to_face[0], together.fragments.pix_to_face[i])


def test_gradients_reach_every_block(renderer):
    light = sh_directional([0.4, 0.4, 1.0], intensity=0.6, ambient=0.4)
    p = params(renderer, light=light, expression={"jawOpen": 0.3}).requires_grad_()
    out = renderer(p)
    target = torch.rand_like(out.image)
    loss = ((out.image - target) ** 2 * out.mask).mean() + 1e-3 * out.landmarks.square().mean()
    loss.backward()
    lay = renderer.layout
    for block in ("identity", "albedo", "expression", "rotation", "translation", "illumination"):
        assert p.grad[0, lay.slice(block)].abs().sum() > 0, block


def test_layout_with_fewer_modes(model):
    lay = layout_for_model(model, num_identity=1)
    r = FaceRenderer(model, lay, image_size=32)
    assert r(r.neutral_params()).image.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError):
        FaceRenderer(model, layout_for_model(toy_head(8, 8)), image_size=32, camera=r.camera.with_size(16))


def test_expressions_change_the_expected_region(renderer):
    light = sh_directional([0.3, 0.5, 1.0], intensity=0.6, ambient=0.4)
    base = renderer(params(renderer, light=light))
    lm = base.landmarks[0]
    checks = {"jawOpen": lambda cx, cy: cy > lm[30, 1], "mouthSmile_L": lambda cx, cy: cx > lm[30, 0] + 2,
              "mouthSmile_R": lambda cx, cy: cx < lm[30, 0] - 2,
              "eyeBlink_L": lambda cx, cy: abs(cx - lm[42:48, 0].mean()) < 5 and abs(cy - lm[42:48, 1].mean()) < 5,
              "eyeBlink_R": lambda cx, cy: abs(cx - lm[36:42, 0].mean()) < 5 and abs(cy - lm[36:42, 1].mean()) < 5}
    for name, where in checks.items():
        out = renderer(params(renderer, light=light, expression={name: 1.0}))
        diff = (out.image - base.image).abs().sum(1)[0]
        assert diff.sum() > 0.5, name
        ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        cx, cy = (diff * xs).sum() / diff.sum(), (diff * ys).sum() / diff.sum()
        assert where(cx, cy), (name, float(cx), float(cy))


def test_render_faces_command(tmp_path, model):
    from PIL import Image

    from stylerig_engine.cli import main

    path = tmp_path / "toy.npz"
    model.save(path)
    out = tmp_path / "faces"
    assert main(["render-faces", "--out", str(out), "--size", "48", "--model", str(path)]) == 0
    names = {p.name for p in out.glob("*.png")}
    for n in ("pose_yaw-45", "pose_frontal", "pose_yaw+45", "pose_pitch+15", "light_viewer-left", "expr_jawOpen",
              "expr_eyeBlink_R", "contact_sheet"):
        assert f"{n}.png" in names
    img = np.asarray(Image.open(out / "pose_frontal.png"))
    assert img.shape == (48, 48, 3)
    assert tuple(img[0, 0]) == (128, 128, 128)  # neutral sRGB mid-grey background
    assert img[24, 24].astype(int).sum() != 3 * 128
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] == 7 * 48


def test_chunked_batches_render_the_same(model):
    r = FaceRenderer(model, image_size=32)
    p = torch.as_tensor(r.layout.sample(5, np.random.default_rng(1)))
    bg = torch.rand(5, 3, 32, 32)
    outs, grads = [], []
    for chunk in (0, 2 * 32 * 32):  # whole batch at once; two images at a time (chunks of 2, 2, 1)
        r.renderer.chunk_pixels = chunk
        q = p.clone().requires_grad_()
        o = r(q, background=bg)
        (o.image.square().sum() + o.depth.sum() + o.landmarks.sum()).backward()
        outs.append(o)
        grads.append(q.grad)
    a, b = outs
    for k in ("image", "mask", "depth", "landmarks", "screen"):
        assert torch.allclose(getattr(a, k), getattr(b, k), atol=1e-5), k
    for k in a.regions:
        assert torch.equal(a.regions[k], b.regions[k])
    fa, fb = a.fragments, b.fragments
    for k in ("pix_to_face", "pixels", "faces", "corner_ids"):
        assert torch.equal(getattr(fa, k), getattr(fb, k)), k
    assert torch.allclose(fa.bary_planar, fb.bary_planar, atol=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-5)
