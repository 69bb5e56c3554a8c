"""The face rig in real Blender (bpy): building it from the engine's geometry, the exact parameter round trip
for every block, agreement with the engine's own geometry, camera and shading, and Live Link keyframes."""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import torch
from stylerig_addon import compat, lighting, livelink
from stylerig_addon import rig as R
from test_addon_pure import write_take

from stylerig_engine.engine import Engine
from stylerig_engine.facemodel import load_default_model
from stylerig_engine.render.face import FaceRenderer

pytestmark = pytest.mark.blender
BLOCKS = ("identity", "albedo", "expression", "rotation", "translation", "illumination")


class _NoGenerator:  # Engine.geometry() needs only the model; the engine wants a generator's attributes
    num_ws, w_dim, z_dim, img_resolution = 2, 4, 4, 8

    def mapping(self, z, psi=1.0):
        raise NotImplementedError

    def synthesis(self, ws):
        raise NotImplementedError


@pytest.fixture(scope="module")
def model():
    return load_default_model()


@pytest.fixture(scope="module")
def engine(model):
    return Engine(_NoGenerator(), model)


@pytest.fixture(scope="module")
def geometry(engine):
    return engine.geometry()  # exactly what the server sends


@pytest.fixture
def rig(geometry):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    meta, arrays = geometry
    return R.build_rig(meta, arrays, seed=5, psi=0.6)


def sample(layout, rng, n=1):
    """Random parameters from the prior (identity within the sliders' +-4 std)."""
    p = layout.prior_mean + layout.prior_std * rng.standard_normal((n, layout.dim))
    p[:, layout.slice("expression")] = np.clip(p[:, layout.slice("expression")], 0.0, 1.0)
    p[:, layout.slice("identity")] = np.clip(p[:, layout.slice("identity")], -3.9, 3.9)
    return p


def test_build_rig(rig, geometry, model):
    meta, arrays = geometry
    face = rig.face
    mesh = face.data
    assert len(mesh.vertices) == model.num_vertices
    assert len(mesh.polygons) == len(arrays["polygon_start"]) - 1
    sizes = np.zeros(len(mesh.polygons), np.int32)
    mesh.polygons.foreach_get("loop_total", sizes)
    np.testing.assert_array_equal(sizes, np.diff(arrays["polygon_start"]))  # quads kept
    assert 4 in set(sizes.tolist())
    uv = np.zeros(len(mesh.loops) * 2, np.float32)
    mesh.uv_layers["UVMap"].data.foreach_get("uv", uv)
    np.testing.assert_allclose(uv.reshape(-1, 2), arrays["uvs"][arrays["polygon_uvs"]], atol=1e-6)
    names = [kb.name for kb in rig.key_blocks]
    lay = rig.layout
    assert names[0] == "Basis"
    assert names[1:1 + lay.size("identity")] == [f"identity_{e}" for e in lay.entries("identity")]
    assert set(meta["expression_names"]) <= set(names) and "eyeBlink_L" in names and "jawOpen" in names
    kb = rig.key_blocks["mouthSmile_L"]
    assert (kb.slider_min, kb.slider_max) == (0.0, 1.0)  # the blendshape range
    kb = rig.key_blocks["identity_000"]
    assert (kb.slider_min, kb.slider_max) == (-4.0, 4.0)  # +- 4 prior std
    co = np.zeros(len(mesh.vertices) * 3, np.float32)
    rig.key_blocks["jawOpen"].data.foreach_get("co", co)
    k = meta["expression_names"].index("jawOpen")
    np.testing.assert_allclose(co.reshape(-1, 3) / R.UNIT, arrays["vertices"] + arrays["expression_basis"][k],
                               atol=2e-4)
    bones = rig.armature.data.bones
    assert set(bones.keys()) == {"root", "neck", "head"}
    assert bones["head"].parent.name == "neck" and bones["neck"].parent.name == "root"
    np.testing.assert_allclose(np.asarray(bones["head"].matrix_local)[:3, :3], np.eye(3), atol=1e-6)
    assert tuple(bones["head"].head_local) == pytest.approx((0, 0, 0))
    assert rig.armature.pose.bones["head"].rotation_mode == "XYZ"
    assert len(rig.suns) == 9 and rig.camera is not None and bpy.context.scene.camera == rig.camera
    tree = rig.face.active_material.node_tree  # Material Preview shows the albedo
    bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
    source = bsdf.inputs["Base Color"].links[0].from_node
    assert (source.type, source.attribute_name) == ("ATTRIBUTE", R.ALBEDO_ATTRIBUTE)
    assert R.face_spec(rig) == {"seed": 5, "psi": pytest.approx(0.6)}
    assert [f"albedo_{e}" in rig.armature for e in lay.entries("albedo")] == [True] * lay.size("albedo")
    # a fresh rig reads back as the neutral face under the prior's mean light
    np.testing.assert_allclose(R.read_params(rig), lay.neutral(), atol=1e-6)


def test_the_rigs_camera_becomes_the_scene_camera(geometry):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    other = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(other)
    scene.camera = other
    rig = R.build_rig(*geometry, seed=1)
    assert scene.camera == rig.camera  # Blender's own renders frame the face as the engine does


def test_parameters_round_trip_exactly_for_every_block(rig):
    lay = rig.layout
    rng = np.random.default_rng(0)
    for p in sample(lay, rng, 4):
        assert R.apply_params(rig, p) == []
        q = R.read_params(rig)
        for block in BLOCKS:
            s = lay.slice(block)
            np.testing.assert_allclose(q[s], p[s], atol=2e-6, rtol=1e-5, err_msg=block)
    # large poses too (|yaw| < 90 degrees), and an illumination far from any real light
    p = sample(lay, rng)[0]
    p[lay.slice("rotation")] = (0.6, -1.2, 0.9)
    p[lay.slice("translation")] = (-3.0, 2.0, 5.0)
    p[lay.slice("illumination")] = rng.normal(size=27)
    R.apply_params(rig, p)
    np.testing.assert_allclose(R.read_params(rig), p, atol=2e-6, rtol=1e-5)


def test_rig_pose_moves_the_mesh_exactly_like_the_engine(rig, model):
    lay = rig.layout
    p = sample(lay, np.random.default_rng(1))[0]
    p[lay.slice("rotation")] = (0.2, 0.5, -0.15)
    p[lay.slice("translation")] = (1.0, -0.5, 2.0)
    R.apply_params(rig, p)
    bpy.context.view_layer.update()
    evaluated = rig.face.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    co = np.zeros(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    evaluated.to_mesh_clear()
    renderer = FaceRenderer(model, image_size=64)
    verts, _ = renderer.geometry(torch.tensor(p[None], dtype=torch.float32))
    np.testing.assert_allclose(co.reshape(-1, 3) / R.UNIT, verts[0].numpy(), atol=2e-4)  # cm
    # and the rig's camera sees the landmarks where the engine's camera does
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = 64
    mw = rig.face.matrix_world
    pts = co.reshape(-1, 3)[np.asarray(model.landmarks)]
    px = np.array([[(c := world_to_camera_view(scene, rig.camera, mw @ Vector(v.tolist()))).x * 64 - 0.5,
                    (1 - c.y) * 64 - 0.5] for v in pts])
    np.testing.assert_allclose(px, renderer.landmarks(torch.tensor(p[None], dtype=torch.float32))[0].numpy(),
                               atol=1e-3)


def test_neck_and_root_edits_read_back_as_pose(rig):
    """The animator may turn the neck or move the root: the head's total transform is what counts."""
    lay = rig.layout
    R.apply_params(rig, lay.neutral())
    pose = rig.armature.pose.bones
    pose["neck"].rotation_euler = (0.0, 0.3, 0.0)
    pose["root"].location = (0.01, 0.0, 0.0)
    p = R.read_params(rig)
    rot, t = p[lay.slice("rotation")], p[lay.slice("translation")]
    assert rot == pytest.approx((0.0, 0.3, 0.0), abs=1e-6)
    # turning about the neck pivot (below the head's origin) also moves the head's origin
    neck_y = np.asarray(rig.armature.data.bones["neck"].head_local)[1] / R.UNIT
    expected = np.array([1.0, 0.0, 0.0]) + (np.eye(3) - R.euler_xyz_matrix((0, 0.3, 0))) @ np.array([0, neck_y, 0])
    np.testing.assert_allclose(t, expected, atol=1e-4)
    # applying those parameters puts the same transform on the head bone alone
    R.apply_params(rig, p)
    np.testing.assert_allclose(R.read_params(rig), p, atol=2e-6)


def test_lights_are_ordinary_suns(rig):
    lay = rig.layout
    R.apply_params(rig, lay.neutral())
    base = R.read_params(rig)[lay.slice("illumination")]
    # an added sun parented to the rig counts, with its direction, colour and strength
    light = bpy.data.lights.new("extra", "SUN")
    light.energy, light.color = 0.5, (1.0, 0.5, 0.25)
    obj = bpy.data.objects.new("extra", light)
    bpy.context.scene.collection.objects.link(obj)
    obj.parent = rig.armature
    obj.rotation_euler = (-math.pi / 4, 0.0, 0.0)  # local +Z tipped towards -Y... (down), in the model frame
    d = R.euler_xyz_matrix((-math.pi / 4, 0, 0))[:, 2]
    sh = R.read_params(rig)[lay.slice("illumination")]
    np.testing.assert_allclose(sh, base + lighting.lights_to_sh(d[None], [[0.5, 0.25, 0.125]], [0, 0, 0]), atol=1e-6)
    obj.hide_render = True  # switched off
    np.testing.assert_allclose(R.read_params(rig)[lay.slice("illumination")], base, atol=1e-6)
    obj.hide_render = False
    # applying parameters switches it off (the dome alone represents them) and says so
    warnings = R.apply_params(rig, lay.neutral())
    assert any("extra" in w for w in warnings) and light.energy == 0
    # a deleted dome light is recreated
    bpy.data.objects.remove(rig.suns[0])
    p = lay.neutral()
    p[lay.slice("illumination")] = np.random.default_rng(4).normal(size=27)
    R.apply_params(rig, p)
    np.testing.assert_allclose(R.read_params(rig), p, atol=2e-6, rtol=1e-5)


def test_out_of_range_values_are_clamped_with_a_warning(rig):
    lay = rig.layout
    p = lay.neutral()
    p[lay.slice("expression").start] = 1.5
    p[lay.slice("identity").start] = -7.0
    warnings = R.apply_params(rig, p)
    assert len(warnings) == 2 and "clamped" in warnings[0]
    q = R.read_params(rig)
    assert q[lay.slice("expression").start] == 1.0 and q[lay.slice("identity").start] == -4.0
    with pytest.raises(ValueError):
        R.apply_params(rig, np.zeros(5))


def test_baked_shading_is_the_engines_shading(rig, geometry):
    lay = rig.layout
    p = sample(lay, np.random.default_rng(2))[0]
    R.apply_params(rig, p)
    R.bake_shading(rig)
    attr = rig.face.data.color_attributes[R.SHADED_ATTRIBUTE]
    rgba = np.zeros(len(attr.data) * 4, np.float32)
    attr.data.foreach_get("color", rgba)
    got = rgba.reshape(-1, 4)[:, :3]
    mesh = rig.face.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    n = np.zeros(len(mesh.vertices) * 3, np.float32)
    mesh.vertex_normals.foreach_get("vector", n)
    rig.face.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh_clear()
    ref = np.clip(lighting.shade(n.reshape(-1, 3), geometry[1]["albedo_mean"], p[lay.slice("illumination")]), 0, None)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_live_link_csv_keyframes_the_rig(rig, tmp_path):
    take = livelink.read_csv(write_take(tmp_path / "take.csv"))
    mapping = livelink.apply_take(rig, take, scene_fps=24.0, start_frame=1)
    assert mapping.unknown == ["Bogus"] and "TongueOut" in mapping.unused and "LeftEyeYaw" in mapping.unused
    assert len(mapping.shapes) == 51 and mapping.head == {"HeadPitch": 0, "HeadYaw": 1, "HeadRoll": 2}
    scene = bpy.context.scene
    lay = rig.layout
    frames, samples = livelink.resample(take, 24.0, 1)
    for i in (0, 12, len(frames) - 1):
        scene.frame_set(int(frames[i]))
        p = R.read_params(rig, update=False)
        expr = dict(zip(lay.entries("expression"), p[lay.slice("expression")]))
        assert expr["eyeBlink_L"] == pytest.approx(samples["EyeBlinkLeft"][i], abs=1e-5)
        assert expr["mouthSmile_R"] == pytest.approx(samples["MouthSmileRight"][i], abs=1e-5)
        assert expr["browInnerUp_L"] == expr["browInnerUp_R"] == pytest.approx(samples["BrowInnerUp"][i], abs=1e-5)
        rot = p[lay.slice("rotation")]
        np.testing.assert_allclose(rot, [samples["HeadPitch"][i], samples["HeadYaw"][i], samples["HeadRoll"][i]],
                                   atol=1e-5)
    # importing again replaces the keys instead of piling them up
    livelink.apply_take(rig, take, scene_fps=24.0, start_frame=1, head_signs=(1, -1, 1))
    scene.frame_set(13)
    assert R.read_params(rig, update=False)[lay.slice("rotation")][1] == pytest.approx(-samples["HeadYaw"][12],
                                                                                       abs=1e-5)
    fc = next(compat.action_fcurves(rig.face.data.shape_keys, rig.face.data.shape_keys.animation_data.action))
    assert len(fc.keyframe_points) == len(frames)
