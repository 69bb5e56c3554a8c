"""The renderer on the default (ICT) face model: visibility on the real mesh, landmarks, occlusion at
+-45 degrees of yaw, expression shape keys."""

from __future__ import annotations

import math

import pytest
import torch

from stylerig_engine.facemodel import load_default_model
from stylerig_engine.render.face import FaceRenderer
from stylerig_engine.render.rasterizer import interpolate, visibility
from stylerig_engine.render.rasterizer_naive import visibility_naive
from stylerig_engine.render.shading import sh_directional


@pytest.fixture(scope="module")
def model():
    return load_default_model()


@pytest.fixture(scope="module")
def renderer(model):
    return FaceRenderer(model, image_size=128)


LIGHT = sh_directional([0.3, 0.5, 1.0], intensity=0.6, ambient=0.4)


def params(renderer, *, yaw=0.0, pitch=0.0, expression=None):
    lay = renderer.layout
    p = renderer.neutral_params(1)
    p[:, lay.slice("rotation")] = torch.tensor([math.radians(pitch), math.radians(yaw), 0.0])
    p[:, lay.slice("illumination")] = LIGHT
    for name, w in (expression or {}).items():
        p[:, lay.offset("expression") + renderer.expression_names.index(name)] = w
    return p


@pytest.mark.parametrize("yaw", [-45.0, 0.0, 45.0])
def test_fast_visibility_equals_the_baseline_on_the_face_mesh(renderer, yaw):
    out = renderer(params(renderer, yaw=yaw, pitch=10.0))
    for cull in (True, False):
        fast = visibility(out.screen, renderer.faces, (128, 128), cull_backfaces=cull)
        assert torch.equal(fast, visibility_naive(out.screen, renderer.faces, (128, 128), cull_backfaces=cull))
    assert torch.equal(out.fragments.pix_to_face, visibility(out.screen, renderer.faces, (128, 128)))


def test_landmarks_project_onto_the_face(renderer):
    for yaw, pitch in ((0.0, 0.0), (20.0, 0.0), (-20.0, 10.0)):
        out = renderer(params(renderer, yaw=yaw, pitch=pitch))
        xy = out.landmarks[0].round().long()
        mask = out.mask[0, 0]
        if yaw == 0 and pitch == 0:  # frontal: every inner landmark (brows, eyes, nose, mouth) is on a covered pixel
            assert mask[xy[17:, 1], xy[17:, 0]].all()
        # The jaw line (and, turned, the brow ends) lie on the silhouette: within a pixel of the face.
        near = torch.nn.functional.max_pool2d(mask[None], 3, 1, 1)[0]
        assert near[xy[:, 1], xy[:, 0]].all(), (yaw, pitch)
    out = renderer(params(renderer))
    lm = out.landmarks[0]
    assert abs(lm[30, 0] - 63.5) < 1.0 and abs(lm[30, 1] - 63.5) < 0.15 * 128  # nose tip near the centre
    assert lm[42:48, 0].mean() > lm[36:42, 0].mean()  # subject's left eye on the viewer's right
    assert 0.42 < lm[36:48, 1].mean() / 128 < 0.52  # FFHQ-like framing
    face_w = (lm[16, 0] - lm[0, 0]) / 128
    assert 0.4 < face_w < 0.75
    assert out.regions["face_skin"][0, 0, xy[30, 1], xy[30, 0]] == 1


@pytest.mark.parametrize("yaw", [45.0, -45.0])
def test_far_cheek_is_hidden_at_45_degrees(renderer, model, yaw):
    out = renderer(params(renderer, yaw=yaw))
    # Model-frame x of the visible surface at every face-skin pixel.
    neutral = torch.as_tensor(model.neutral)[None]
    x = interpolate(neutral, out.fragments)[:, 0]
    skin = out.regions["face_skin"].view(-1).index_select(0, out.fragments.pixels) > 0
    far_side = (x[skin] > 0.5) if yaw > 0 else (x[skin] < -0.5)  # yaw > 0 turns the subject's left away
    near_side = (x[skin] < -0.5) if yaw > 0 else (x[skin] > 0.5)
    assert far_side.sum() < 0.5 * near_side.sum()
    # The far-side jaw landmarks lie behind the visible surface; the near-side ones are on it.
    far, near = ((14, 15, 16), (0, 1, 2)) if yaw > 0 else ((0, 1, 2), (14, 15, 16))
    s = out.screen[0, renderer.landmark_ids]
    xy = s[:, :2].round().long()
    zbuf = out.depth[0, 0]
    for i in far:
        assert s[i, 2] > zbuf[xy[i, 1], xy[i, 0]] + 0.5, i
    for i in near:
        assert abs(s[i, 2] - zbuf[xy[i, 1], xy[i, 0]]) < 0.3, i


def test_expression_shape_keys_change_the_expected_region(renderer):
    base = renderer(params(renderer))
    lm = base.landmarks[0]
    eye_l, eye_r = lm[42:48].mean(0), lm[36:42].mean(0)
    mouth = lm[48:68].mean(0)
    ys, xs = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")

    def centroid(name):
        out = renderer(params(renderer, expression={name: 1.0}))
        diff = (out.image - base.image).abs().sum(1)[0]
        assert diff.sum() > 5.0, name
        return torch.stack([(diff * xs).sum(), (diff * ys).sum()]) / diff.sum()

    c = centroid("jawOpen")
    assert c[1] > lm[33, 1] and abs(c[0] - lm[30, 0]) < 4  # below the nose, centred
    c = centroid("mouthSmile_L")
    assert c[0] > lm[30, 0] + 3 and abs(c[1] - mouth[1]) < 12  # subject's left = viewer's right
    c = centroid("mouthSmile_R")
    assert c[0] < lm[30, 0] - 3 and abs(c[1] - mouth[1]) < 12
    for name, eye in (("eyeBlink_L", eye_l), ("eyeBlink_R", eye_r)):
        c = centroid(name)
        assert (c - eye).norm() < 6, (name, c, eye)
