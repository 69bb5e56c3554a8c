"""The face rig: the engine's geometry -> a Blender mesh with shape keys, an armature, a light dome and a camera;
the rig <-> the engine's parameter vector.

Frames. The armature object carries the model frame: rotation (90°, 0, 0), no scale, so inside it +X is the
subject's left, +Y up and +Z out of the face (towards the camera), in metres (model centimetres x 0.01). Its
children are the face mesh (all vertices weighted to the head bone), the suns and the camera; moving the
armature object moves the whole rig (camera and lights included) and changes no parameter.

Bones (rest pose along +Y with roll 0, so every bone's local axes are the model axes):
  root   translation: its pose location is the parameter translation (x 0.01 m)
  neck   a second pivot for the animator (rest: identity); parameters -> rig leaves it at rest
  head   head at the model origin, rotation mode XYZ: Euler (x, y, z) = (pitch, yaw, roll), the matrix
         Rz(roll) Ry(yaw) Rx(pitch) of params.py exactly
Reading back takes the head bone's evaluated armature-space transform D = pose @ rest^-1 (root, neck and head,
constraints included): rotation = D's rotation as XYZ Euler angles, translation = D's translation / 0.01.

Shape keys: the identity modes ("identity_000", ...) and the expression blendshapes under the model's names
(ARKit names for the ICT model), sliders limited to the model's prior (blendshapes: the expression range;
PCA modes: mean +- 4 std). Albedo coefficients and the ambient light are custom properties of the armature
object ("albedo_<entry>", "ambient"). Lights: see lighting.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bpy
import numpy as np
from mathutils import Matrix, Vector

from . import compat, lighting
from .layout import Layout

UNIT = 0.01  # metres per model centimetre
RIG_VERSION = 1
RIG_KEY = "stylerig_rig"
LAYOUT_KEY = "stylerig_layout"
ROLE_KEY = "stylerig_role"
DOME_KEY = "stylerig_dome"
AMBIENT_KEY = "ambient"
SEED_KEY, PSI_KEY = "face_seed", "face_psi"
# The parameters "Match rig to face" set (the rig's rest pose for this face). Sent with every render, so the engine
# finds the animator's expression keys against them and not against its own reading of the face, which differs
# after an Exact match (docs/protocol.md, `rest`).
REST_KEY = "stylerig_rest"
IDENTITY_PREFIX = "identity_"
ALBEDO_PREFIX = "albedo_"
ROOT, NECK, HEAD = "root", "neck", "head"
ALBEDO_ATTRIBUTE = "albedo"
SHADED_ATTRIBUTE = "stylerig_shaded"


# ---- pure helpers ---------------------------------------------------------------------------------------
def euler_xyz_matrix(angles) -> np.ndarray:
    """(pitch, yaw, roll) -> R = Rz(roll) Ry(yaw) Rx(pitch) (params.rotation_matrix, Blender's XYZ Euler)."""
    x, y, z = (float(a) for a in angles)
    cx, sx, cy, sy, cz, sz = math.cos(x), math.sin(x), math.cos(y), math.sin(y), math.cos(z), math.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def euler_xyz_from_matrix(r: np.ndarray) -> np.ndarray:
    """Inverse of euler_xyz_matrix (yaw in [-90°, 90°]); scale is removed first."""
    r = np.asarray(r, np.float64)[:3, :3]
    r = r / np.linalg.norm(r, axis=0, keepdims=True)
    yaw = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    if abs(r[2, 0]) < 1 - 1e-9:
        pitch = math.atan2(r[2, 1], r[2, 2])
        roll = math.atan2(r[1, 0], r[0, 0])
    else:  # gimbal lock: put everything on pitch
        pitch = math.atan2(-r[1, 2], r[1, 1])
        roll = 0.0
    return np.array([pitch, yaw, roll])


def head_transform(pose_matrix, rest_matrix) -> tuple[np.ndarray, np.ndarray]:
    """The head bone's armature-space pose and rest matrices (4x4, metres) -> (rotation angles, translation cm)."""
    d = np.asarray(pose_matrix, np.float64) @ np.linalg.inv(np.asarray(rest_matrix, np.float64))
    return euler_xyz_from_matrix(d[:3, :3]), d[:3, 3] / UNIT


def rotation_to(direction) -> np.ndarray:
    """3x3 rotation that takes +Z to `direction` (a sun's local +Z points towards the light)."""
    d = np.asarray(direction, np.float64)
    d = d / np.linalg.norm(d)
    q = Vector((0.0, 0.0, 1.0)).rotation_difference(Vector(d.tolist()))
    return np.array(q.to_matrix())


def portrait_camera(landmarks_3d: np.ndarray, distance: float = 55.0) -> dict:
    """The engine's default camera (stylerig_engine.render.cameras.portrait_camera, mirrored in numpy for when
    the engine's geometry reply carries no camera): {"focal": focal / image size, "position": (x, y, z) cm}."""
    lm = np.asarray(landmarks_3d, np.float64)
    eye_avg = (lm[36:42].mean(0) + lm[42:48].mean(0)) / 2
    mouth_avg = (lm[48] + lm[54]) / 2
    centre = eye_avg + 0.1 * (mouth_avg - eye_avg)
    focal, pos = 2.0, centre + np.array([0.0, 0.0, distance])
    size = 1000.0  # the result does not depend on it
    for _ in range(4):
        f, c = focal * size, (size - 1) / 2
        depth = pos[2] - lm[:, 2]
        xy = np.stack([c + f * (lm[:, 0] - pos[0]) / depth, c - f * (lm[:, 1] - pos[1]) / depth], 1)
        e_l, e_r = xy[36:42].mean(0), xy[42:48].mean(0)
        e_avg, m_avg = (e_l + e_r) / 2, (xy[48] + xy[54]) / 2
        e2e, e2m = e_r - e_l, m_avg - e_avg
        side = 2.0 * max(np.hypot(*e2e) * 2.0, np.hypot(*e2m) * 1.8)
        shift = (e_avg + 0.1 * e2m - c) * distance / f
        pos = pos + np.array([shift[0], -shift[1], 0.0])
        focal = focal * size / side
    return {"focal": float(focal), "position": [float(x) for x in pos]}


# ---- finding the rig -------------------------------------------------------------------------------------
@dataclass
class Rig:
    armature: Any  # bpy.types.Object
    layout: Layout
    face: Any = None  # the mesh object
    camera: Any = None

    @property
    def key_blocks(self):
        return self.face.data.shape_keys.key_blocks

    @property
    def suns(self) -> list:
        """The sun lights parented to the rig (the dome and any the animator added)."""
        return [c for c in self.armature.children if c.type == "LIGHT" and c.data.type == "SUN"]


@functools.lru_cache(maxsize=8)
def _layout(description: str) -> Layout:
    return Layout.from_description(description)


def is_rig(obj) -> bool:
    return obj is not None and obj.type == "ARMATURE" and RIG_KEY in obj


def find_rig(context=None, obj=None) -> Rig | None:
    """The rig of `obj` (the armature or one of its children), else of the active object, else the first in the
    scene."""
    context = context or bpy.context
    scene = getattr(context, "scene", None)
    candidates = [obj, getattr(context, "active_object", None)]
    candidates += [o.parent for o in candidates if o is not None]
    candidates += list(scene.objects if scene is not None else bpy.data.objects)
    for o in candidates:
        if is_rig(o):
            try:
                return load_rig(o)
            except ValueError:  # a rig whose face was deleted: look further
                continue
    return None


def load_rig(arm) -> Rig:
    rig = Rig(arm, _layout(str(arm[LAYOUT_KEY])))
    for child in arm.children:
        role = child.get(ROLE_KEY)
        if role == "face":
            rig.face = child
        elif role == "camera":
            rig.camera = child
    if rig.face is None or rig.face.data.shape_keys is None:
        raise ValueError(f"rig {arm.name!r} has no face mesh with shape keys")
    return rig


# ---- building ----------------------------------------------------------------------------------------------
def build_rig(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, context=None, name: str = "StyleRig",
              camera: Mapping[str, Any] | None = None, seed: int = 0, psi: float = 0.7) -> Rig:
    """Create the rig in the current scene from the engine's geometry() reply and return it.

    `camera`: {"focal": f / image size, "position": (x, y, z) cm} of the engine's renderer; default
    meta["camera"], else the portrait camera of the model's landmarks."""
    context = context or bpy.context
    scene = context.scene
    layout = Layout.from_description(meta["layout"])
    if context.mode != "OBJECT" and context.active_object is not None:
        bpy.ops.object.mode_set(mode="OBJECT")
    verts = np.asarray(arrays["vertices"], np.float64)
    n_v = len(verts)

    coll = bpy.data.collections.new(name)
    scene.collection.children.link(coll)

    arm_data = bpy.data.armatures.new(name)
    arm = bpy.data.objects.new(name, arm_data)
    coll.objects.link(arm)
    arm.rotation_mode = "XYZ"
    arm.rotation_euler = (math.pi / 2, 0.0, 0.0)
    arm[RIG_KEY] = RIG_VERSION
    arm[LAYOUT_KEY] = layout.dumps()
    arm[SEED_KEY] = int(seed)
    arm[PSI_KEY] = float(psi)
    arm.id_properties_ui(SEED_KEY).update(min=0, description="seed of the engine's face (new_face)")
    arm.id_properties_ui(PSI_KEY).update(min=0.0, max=2.0, soft_min=0.0, soft_max=1.0,
                                        description="truncation of the engine's face")
    arm_data.display_type = "STICK"
    arm.show_in_front = True

    y_min, y_max = float(verts[:, 1].min()), float(verts[:, 1].max())
    _make_bones(context, arm, y_min * UNIT, y_max * UNIT)
    for pb in arm.pose.bones:
        pb.rotation_mode = "XYZ"

    face = _make_mesh(name + " Face", meta, arrays, layout)
    coll.objects.link(face)
    face.parent = arm
    face[ROLE_KEY] = "face"
    group = face.vertex_groups.new(name=HEAD)
    group.add(list(range(n_v)), 1.0, "REPLACE")
    mod = face.modifiers.new("Armature", "ARMATURE")
    mod.object = arm  # type: ignore[attr-defined]

    # albedo coefficients and the ambient light: custom properties with the prior's soft limits
    lo, hi = layout.range("albedo")
    for entry, a, b in zip(layout.entries("albedo"), lo, hi):
        key = ALBEDO_PREFIX + entry
        arm[key] = 0.0
        arm.id_properties_ui(key).update(soft_min=float(a), soft_max=float(b), description=f"albedo mode {entry}")
    arm[AMBIENT_KEY] = [0.0, 0.0, 0.0]
    arm.id_properties_ui(AMBIENT_KEY).update(soft_min=-1.0, soft_max=2.0, subtype="NONE",
                                             description="ambient light (RGB, added to SH coefficient L00)")

    for i, (label, _, _) in enumerate(lighting.DOME):
        light = bpy.data.lights.new(f"{name} {label}", "SUN")
        obj = bpy.data.objects.new(f"{name} {label}", light)
        coll.objects.link(obj)
        obj.parent = arm
        obj[ROLE_KEY] = "light"
        obj[DOME_KEY] = i
        light.angle = math.radians(5.0)  # type: ignore[attr-defined]

    cam_spec = dict(camera or meta.get("camera") or portrait_camera(verts[np.asarray(arrays["landmarks"])]))
    cam_data = bpy.data.cameras.new(name + " Camera")
    cam_data.lens_unit = "FOV"
    cam_data.sensor_fit = "AUTO"
    cam_data.angle = 2 * math.atan(0.5 / float(cam_spec["focal"]))
    cam_data.clip_start, cam_data.clip_end = 0.05, 10.0
    cam = bpy.data.objects.new(name + " Camera", cam_data)
    coll.objects.link(cam)
    cam.parent = arm
    cam[ROLE_KEY] = "camera"
    cam.location = [float(x) * UNIT for x in cam_spec["position"]]
    scene.camera = cam  # Blender's own renders then frame the face as the engine does
    # the engine's images are display-ready sRGB: the Standard view transform shows them (and the rig) unchanged
    scene.view_settings.view_transform = "Standard"

    rig = load_rig(arm)
    apply_params(rig, layout.neutral())
    return rig


def _make_bones(context, arm, y_min: float, y_max: float) -> None:
    view_layer = context.view_layer
    previous = view_layer.objects.active
    view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        bones = arm.data.edit_bones
        root = bones.new(ROOT)
        root.head, root.tail = (0.0, y_min - 0.02, 0.0), (0.0, y_min + 0.03, 0.0)
        neck = bones.new(NECK)
        neck.head, neck.tail = (0.0, 0.5 * y_min, 0.0), (0.0, 0.0, 0.0)
        head = bones.new(HEAD)
        head.head, head.tail = (0.0, 0.0, 0.0), (0.0, 0.8 * y_max, 0.0)
        for b in (root, neck, head):
            b.roll = 0.0
        root.use_deform = neck.use_deform = False
        neck.parent, head.parent = root, neck
        head.use_connect = True
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = previous if previous is not None else arm


def _make_mesh(name: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], layout: Layout):
    verts = np.asarray(arrays["vertices"], np.float64)
    start = np.asarray(arrays["polygon_start"], np.int64)
    corners = np.asarray(arrays["polygon_vertices"], np.int64)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(verts))
    mesh.vertices.foreach_set("co", (verts * UNIT).astype(np.float32).ravel())
    mesh.loops.add(len(corners))
    mesh.loops.foreach_set("vertex_index", corners.astype(np.int32))
    mesh.polygons.add(len(start) - 1)
    mesh.polygons.foreach_set("loop_start", start[:-1].astype(np.int32))
    mesh.update(calc_edges=True)
    if "uvs" in arrays and "polygon_uvs" in arrays and len(arrays["polygon_uvs"]) == len(corners):
        uv = mesh.uv_layers.new(name="UVMap")
        uvs = np.asarray(arrays["uvs"], np.float32)[np.asarray(arrays["polygon_uvs"], np.int64)]
        uv.data.foreach_set("uv", uvs.ravel())
    if "albedo_mean" in arrays:
        col = mesh.color_attributes.new(ALBEDO_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        rgba = np.concatenate([np.asarray(arrays["albedo_mean"], np.float32), np.ones((len(verts), 1), np.float32)], 1)
        col.data.foreach_set("color", rgba.ravel())  # type: ignore[attr-defined]
        mesh.color_attributes.active_color = col
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index or 0
    for poly in mesh.polygons:
        poly.use_smooth = True
    mesh.materials.append(_albedo_material(name))
    obj = bpy.data.objects.new(name, mesh)

    obj.shape_key_add(name="Basis", from_mix=False)
    ident = np.asarray(arrays.get("identity_basis", np.zeros((0, len(verts), 3))), np.float64)
    expr = np.asarray(arrays["expression_basis"], np.float64)
    names = [IDENTITY_PREFIX + e for e in layout.entries("identity")][:len(ident)] + list(meta["expression_names"])
    lo = np.concatenate([layout.range("identity")[0][:len(ident)], layout.range("expression")[0]])
    hi = np.concatenate([layout.range("identity")[1][:len(ident)], layout.range("expression")[1]])
    for k, (key_name, basis) in enumerate(zip(names, [*ident, *expr])):
        kb = obj.shape_key_add(name=key_name, from_mix=False)
        kb.data.foreach_set("co", ((verts + basis) * UNIT).astype(np.float32).ravel())
        kb.slider_min = float(np.clip(lo[k], -10.0, 10.0))
        kb.slider_max = float(np.clip(hi[k], -10.0, 10.0))
        kb.value = 0.0
    return obj


def _albedo_material(name: str):
    """Principled BSDF whose base colour is the mesh's albedo attribute (Material Preview and renders show the
    face's colours); the viewport's Solid mode shows the attribute through its own colour setting."""
    mat = bpy.data.materials.new(name)
    tree = compat.ensure_node_tree(mat)
    nodes = tree.nodes
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:  # a default tree without one: build the usual pair
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        output = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None) or nodes.new("ShaderNodeOutputMaterial")
        tree.links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    attr = nodes.new("ShaderNodeAttribute")
    attr.name = attr.label = "Albedo"
    attr.attribute_name = ALBEDO_ATTRIBUTE  # type: ignore[attr-defined]
    attr.location = (bsdf.location.x - 250, bsdf.location.y)
    tree.links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    mat.diffuse_color = (0.8, 0.62, 0.52, 1.0)  # type: ignore[assignment]  # Solid mode, Material colour: skin
    return mat


# ---- rig <-> parameters ----------------------------------------------------------------------------------
def _shape_values(rig: Rig) -> dict[str, float]:
    blocks = rig.key_blocks
    values = np.zeros(len(blocks), np.float32)
    blocks.foreach_get("value", values)
    return {kb.name: float(v) for kb, v in zip(blocks, values)}


def read_params(rig: Rig, *, update: bool = True) -> np.ndarray:
    """The rig's parameter vector (D,), as the engine's layout. `update`: evaluate the depsgraph first (pass
    False where it is known to be evaluated, e.g. in a depsgraph or frame-change handler)."""
    if update:
        bpy.context.view_layer.update()
    lay = rig.layout
    p = lay.neutral()
    values = _shape_values(rig)
    for block, prefix in (("identity", IDENTITY_PREFIX), ("expression", "")):
        s = lay.slice(block)
        for i, entry in enumerate(lay.entries(block)):
            v = values.get(prefix + entry)
            if v is not None:
                p[s.start + i] = v
    s = lay.slice("albedo")
    for i, entry in enumerate(lay.entries("albedo")):
        p[s.start + i] = float(rig.armature.get(ALBEDO_PREFIX + entry, 0.0))
    head = rig.armature.pose.bones[HEAD]
    angles, t = head_transform(head.matrix, rig.armature.data.bones[HEAD].matrix_local)
    p[lay.slice("rotation")] = angles
    p[lay.slice("translation")] = t
    p[lay.slice("illumination")] = read_illumination(rig)
    return p


def sun_directions(rig: Rig, suns) -> np.ndarray:
    """(N, 3) model-frame directions towards the suns (their local +Z), from the evaluated matrices."""
    inv = np.linalg.inv(np.asarray(rig.armature.matrix_world, np.float64))
    dirs = [(inv @ np.asarray(s.matrix_world, np.float64))[:3, 2] for s in suns]
    return np.asarray(dirs, np.float64).reshape(-1, 3)


def read_illumination(rig: Rig) -> np.ndarray:
    """(27,) from the rig's ambient and every sun parented to it that renders (hide_render off)."""
    suns = [s for s in rig.suns if not s.hide_render]
    irradiance = lighting.join_irradiance([s.data.energy for s in suns], [tuple(s.data.color) for s in suns])
    ambient = np.asarray(rig.armature.get(AMBIENT_KEY, (0.0, 0.0, 0.0)), np.float64).reshape(3)
    return lighting.lights_to_sh(sun_directions(rig, suns), irradiance, ambient)


def apply_params(rig: Rig, p) -> list[str]:
    """Set the rig to the parameter vector p (D,). Returns warnings (values clamped to slider limits, extra suns
    switched off). The head rotation goes on the head bone (neck and root rotations reset), the translation on
    the root bone, the lighting on the dome (directions reset) and the ambient."""
    lay = rig.layout
    p = lay.check(p)
    warnings: list[str] = []
    blocks = rig.key_blocks
    for block, prefix in (("identity", IDENTITY_PREFIX), ("expression", "")):
        s = lay.slice(block)
        for i, entry in enumerate(lay.entries(block)):
            kb = blocks.get(prefix + entry)
            v = float(p[s.start + i])
            if kb is None:
                if v != lay.neutral()[s.start + i]:
                    warnings.append(f"{block} {entry!r} has no shape key; value {v:.3g} not set")
                continue
            if not kb.slider_min <= v <= kb.slider_max:
                warnings.append(f"{kb.name} = {v:.4g} clamped to [{kb.slider_min:g}, {kb.slider_max:g}]")
            kb.value = v
    s = lay.slice("albedo")
    for i, entry in enumerate(lay.entries("albedo")):
        rig.armature[ALBEDO_PREFIX + entry] = float(p[s.start + i])

    pose = rig.armature.pose.bones
    for name in (ROOT, NECK):
        pb = pose[name]
        pb.rotation_mode = "XYZ"
        pb.rotation_euler = (0.0, 0.0, 0.0)
        pb.location = (0.0, 0.0, 0.0)
        pb.scale = (1.0, 1.0, 1.0)
    pose[ROOT].location = [float(x) * UNIT for x in p[lay.slice("translation")]]
    head = pose[HEAD]
    head.rotation_mode = "XYZ"
    head.rotation_euler = [float(x) for x in p[lay.slice("rotation")]]
    head.location = (0.0, 0.0, 0.0)
    head.scale = (1.0, 1.0, 1.0)

    warnings += apply_illumination(rig, p[lay.slice("illumination")])
    return warnings


def apply_illumination(rig: Rig, sh) -> list[str]:
    """Light the rig with the 27-vector `sh`: dome suns in their directions with strengths/colours solving
    lighting.sh_to_lights, the rest in the ambient. Other suns parented to the rig are switched off."""
    irradiance, ambient = lighting.sh_to_lights(sh)
    strength, colour = lighting.split_irradiance(irradiance)
    dome = {s.get(DOME_KEY): s for s in rig.suns if s.get(DOME_KEY) is not None}
    warnings = []
    for obj in rig.suns:
        if obj.get(DOME_KEY) is None and obj.data.energy != 0:
            obj.data.energy = 0.0
            warnings.append(f"sun {obj.name!r} is not part of the light dome: switched off")
    for i, (label, _, _) in enumerate(lighting.DOME):
        obj = dome.get(i)
        if obj is None:
            light = bpy.data.lights.new(f"{rig.armature.name} {label}", "SUN")
            obj = bpy.data.objects.new(light.name, light)
            for coll in rig.armature.users_collection:
                coll.objects.link(obj)
            obj.parent = rig.armature
            obj[ROLE_KEY], obj[DOME_KEY] = "light", i
        d = lighting.DOME_DIRECTIONS[i]
        rot = Matrix(rotation_to(d).tolist()).to_4x4()
        obj.matrix_parent_inverse = Matrix.Identity(4)
        obj.rotation_mode = "XYZ"
        obj.rotation_euler = rot.to_euler("XYZ")
        obj.location = [float(x) * 0.6 for x in d]  # 60 cm from the head (suns ignore it)
        obj.scale = (1.0, 1.0, 1.0)
        obj.hide_render = False
        obj.data.energy = float(strength[i])
        obj.data.color = [float(c) for c in colour[i]]
    rig.armature[AMBIENT_KEY] = [float(a) for a in ambient]
    return warnings


def face_spec(rig: Rig) -> dict:
    """The engine face of the rig: {"seed", "psi"} (StreamingRenderer re-creates it after reconnects), and
    "rest" (D floats) when the rig was matched to the face (set_rest)."""
    spec: dict = {"seed": int(rig.armature.get(SEED_KEY, 0)), "psi": float(rig.armature.get(PSI_KEY, 0.7))}
    rest = rig.armature.get(REST_KEY)
    if rest is not None and len(rest) == rig.layout.dim:  # a rig rebuilt for another layout drops it
        spec["rest"] = [float(x) for x in rest]
    return spec


def set_rest(rig: Rig) -> None:
    """Record the rig's current parameters as its rest pose for its face (right after a match)."""
    rig.armature[REST_KEY] = [float(x) for x in read_params(rig)]


def clear_rest(rig: Rig) -> None:
    """Forget the rest pose: the rig no longer shows the face's match (reset, another face)."""
    rig.armature.pop(REST_KEY, None)


def collect_frames(scene, rig: Rig, frames) -> np.ndarray:
    """(N, D) parameters at each frame (scene.frame_set evaluates animation, drivers and constraints); the
    current frame is restored."""
    current = scene.frame_current
    out = []
    try:
        for f in frames:
            scene.frame_set(int(f))
            out.append(read_params(rig, update=False))
    finally:
        scene.frame_set(current)
    return np.asarray(out, np.float64).reshape(len(out), rig.layout.dim)


# ---- a look at the rig through the engine's lighting model -----------------------------------------------
def bake_shading(rig: Rig, *, update: bool = True) -> None:
    """Write albedo x SH irradiance of the posed, lit rig into the SHADED_ATTRIBUTE colour attribute (the
    engine's shading model, for a Workbench FLAT render that shows what the rig asks for)."""
    if update:
        bpy.context.view_layer.update()
    depsgraph = bpy.context.evaluated_depsgraph_get()
    mesh = rig.face.data
    evaluated = rig.face.evaluated_get(depsgraph)
    emesh = evaluated.to_mesh()
    try:
        normals = np.zeros(len(emesh.vertices) * 3, np.float32)
        emesh.vertex_normals.foreach_get("vector", normals)
    finally:
        evaluated.to_mesh_clear()
    normals = normals.reshape(-1, 3).astype(np.float64)  # the mesh's frame is the model frame (parent: rig)
    p = read_params(rig, update=False)
    albedo_attr = mesh.color_attributes.get(ALBEDO_ATTRIBUTE)
    if albedo_attr is not None:
        albedo = np.zeros(len(mesh.vertices) * 4, np.float32)
        albedo_attr.data.foreach_get("color", albedo)  # type: ignore[attr-defined]
        albedo = albedo.reshape(-1, 4)[:, :3].astype(np.float64)
    else:
        albedo = np.full((len(mesh.vertices), 3), 0.6)
    colour = np.clip(lighting.shade(normals, albedo, p[rig.layout.slice("illumination")]), 0.0, None)
    attr = mesh.color_attributes.get(SHADED_ATTRIBUTE)
    if attr is None:
        attr = mesh.color_attributes.new(SHADED_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    rgba = np.concatenate([colour, np.ones((len(colour), 1))], 1).astype(np.float32)
    attr.data.foreach_set("color", rgba.ravel())  # type: ignore[attr-defined]
    mesh.color_attributes.active_color = attr
