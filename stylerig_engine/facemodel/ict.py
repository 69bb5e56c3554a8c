"""The ICT Face Model Light (USC ICT, MIT licence) as a stylerig MorphableModel.

Sources, either of:
  * an upstream ``FaceXModel`` folder (ICT-VGL/ICT-FaceKit): generic_neutral_mesh.obj, identity000..099.obj,
    the 53 expression OBJs named in vertex_indices.json["expressions"], vertex_indices.json; the LICENSE in
    that folder or its parent;
  * the pre-extracted pack folder: ict_face_light_pack.npz + LICENSE.

Conversion (see docs/face-model.md):
  * units stay centimetres; ICT's axes already are ours (+X subject's left, +Y up, +Z out of the face);
  * the head is translated so that the origin is the head centre: x = 0 on the symmetry plane, y at eye level
    (mean height of the four eye-corner landmarks), z half-way between the back of the skull and the nose tip;
  * identity modes = shape - neutral (ICT scales them so that coefficients are N(0, 1));
    expression basis = the 53 ARKit blendshapes (PupilDilate_L/R are left out), prior "blendshape";
  * kept geometry (the parts of a portrait): face, head and neck, mouth socket, eye sockets, gums and tongue,
    teeth, eyeballs (sclera + iris). Left out: lacrimal fluid, eye blend, eye occlusion and eyelashes
    (transparent overlay layers); vertices used only by those are dropped and everything is re-indexed;
  * albedo: ICT has none; the project's own per-vertex albedo model is attached (facemodel/albedo.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .model import ModelFormatError, MorphableModel
from .obj import fan_triangulate, read_obj, read_obj_vertices

ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ICT_REPO_URL = f"https://raw.githubusercontent.com/ICT-VGL/ICT-FaceKit/{ICT_COMMIT}/"
MODEL_NAME = "ict-face-light"
# Bumped whenever the conversion changes; a cached default model of another version is rebuilt when a source
# is available.
CONVERTER_VERSION = 1
NUM_IDENTITY = 100
NEUTRAL_OBJ = "generic_neutral_mesh.obj"
PACK_FILE = "ict_face_light_pack.npz"
LEFT_OUT_EXPRESSIONS = ("PupilDilate_L", "PupilDilate_R")

# Materials (OBJ `usemtl` groups) that make a portrait; the others are transparent overlay layers.
KEPT_MATERIALS = ("M_Face", "M_BackHead", "M_GumsTongue", "M_Teeth",
                  "M_ScleraLeft", "M_IrisLeft", "M_ScleraRight", "M_IrisRight")
# Upstream geometry table (ICT-FaceKit README), inclusive vertex ranges in the upstream numbering.
UPSTREAM_PARTS = {
    "face": (0, 9408),
    "head_neck": (9409, 11247),
    "mouth_socket": (11248, 13293),
    "eye_socket_left": (13294, 13677),
    "eye_socket_right": (13678, 14061),
    "gums_tongue": (14062, 17038),
    "teeth": (17039, 21450),
    "eyeball_left": (21451, 23020),
    "eyeball_right": (23021, 24590),
}
UPSTREAM_VERTICES = 26719


@dataclass
class IctSource:
    """The raw upstream data, in upstream numbering (every vertex, every polygon)."""

    neutral: np.ndarray  # (26719, 3)
    identity: np.ndarray  # (K_id, 26719, 3) absolute positions
    expressions: np.ndarray  # (K_exp, 26719, 3) absolute positions
    expression_names: list[str]
    uvs: np.ndarray
    face_start: np.ndarray
    face_v: np.ndarray
    face_vt: np.ndarray
    face_material: np.ndarray
    material_names: list[str]
    vertex_indices: dict
    license: str
    origin: str  # where it was read from, for the model's meta


def find_license(folder: Path) -> str:
    for candidate in (folder / "LICENSE", folder.parent / "LICENSE", folder / "LICENSE.txt"):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8", errors="replace")
    raise ModelFormatError(f"{folder}: no LICENSE file (the ICT FaceKit MIT notice must travel with the model)")


def _expression_list(vertex_indices: dict, expressions: Sequence[str] | None) -> list[str]:
    names = [n for n in vertex_indices.get("expressions", []) if n not in LEFT_OUT_EXPRESSIONS]
    if not names:
        raise ModelFormatError("vertex_indices.json has no 'expressions' list")
    if expressions is None:
        return names
    unknown = [n for n in expressions if n not in names]
    if unknown:
        raise ModelFormatError(f"unknown ICT expressions {unknown}")
    return list(expressions)


def upstream_files(num_identity: int = NUM_IDENTITY, expressions: Sequence[str] | None = None,
                   vertex_indices: dict | None = None) -> list[str]:
    """The FaceXModel files a full import reads (expression names from vertex_indices.json)."""
    names = list(expressions) if expressions is not None else _expression_list(vertex_indices or {}, None)
    return ([NEUTRAL_OBJ, "vertex_indices.json"] + [f"identity{i:03d}.obj" for i in range(num_identity)]
            + [f"{n}.obj" for n in names])


def read_facex_folder(folder: str | os.PathLike, *, num_identity: int | None = None,
                      expressions: Sequence[str] | None = None, progress: bool = False) -> IctSource:
    """Read an upstream FaceXModel folder (optionally only the first `num_identity` identities and the
    named expressions)."""
    folder = Path(folder)
    vi_path = folder / "vertex_indices.json"
    if not (folder / NEUTRAL_OBJ).is_file() or not vi_path.is_file():
        raise ModelFormatError(f"{folder}: not an ICT FaceXModel folder (needs {NEUTRAL_OBJ} and vertex_indices.json)")
    vertex_indices = json.loads(vi_path.read_text())
    names = _expression_list(vertex_indices, expressions)
    k_id = NUM_IDENTITY if num_identity is None else int(num_identity)
    files = [f"identity{i:03d}.obj" for i in range(k_id)] + [f"{n}.obj" for n in names]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ModelFormatError(f"{folder}: missing ICT shape files {missing[:5]}{more}; "
                               "run `stylerig assets fetch ict` to download the complete model")
    mesh = read_obj(folder / NEUTRAL_OBJ)
    v = len(mesh.vertices)
    shapes = np.empty((len(files), v, 3), dtype=np.float32)
    from tqdm import tqdm

    for i, f in enumerate(tqdm(files, desc="reading ICT shapes", unit="obj", disable=not progress)):
        s = read_obj_vertices(folder / f)
        if s.shape != (v, 3):
            raise ModelFormatError(f"{folder / f}: {len(s)} vertices, the neutral mesh has {v}")
        shapes[i] = s
    return IctSource(neutral=mesh.vertices, identity=shapes[:k_id], expressions=shapes[k_id:],
                     expression_names=names, uvs=mesh.uvs, face_start=mesh.face_start, face_v=mesh.face_v,
                     face_vt=mesh.face_vt, face_material=mesh.face_material, material_names=mesh.material_names,
                     vertex_indices=vertex_indices, license=find_license(folder), origin=str(folder))


def read_pack(folder: str | os.PathLike, *, num_identity: int | None = None,
              expressions: Sequence[str] | None = None, progress: bool = False) -> IctSource:
    """Read the pre-extracted pack folder (ict_face_light_pack.npz + LICENSE)."""
    folder = Path(folder)
    path = folder / PACK_FILE if folder.is_dir() else folder
    folder = path.parent
    need = ("neutral", "shape_names", "shapes", "uv", "face_vertex_start", "face_v", "face_vt", "face_material",
            "material_names", "vertex_indices_json")
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no ICT pack file here") from None
    except Exception as e:
        raise ModelFormatError(f"{path}: not a readable ICT pack ({e})") from e
    with data:
        missing = [k for k in need if k not in data.files]
        if missing:
            raise ModelFormatError(f"{path}: missing arrays {missing}")
        vertex_indices = json.loads(str(data["vertex_indices_json"]))
        names = _expression_list(vertex_indices, expressions)
        shape_names = [str(s) for s in data["shape_names"]]
        k_id = NUM_IDENTITY if num_identity is None else int(num_identity)
        wanted = [f"identity{i:03d}" for i in range(k_id)] + names
        absent = [n for n in wanted if n not in shape_names]
        if absent:
            raise ModelFormatError(f"{path}: pack lacks shapes {absent[:5]}")
        shapes_all = data["shapes"]
        rows = [shape_names.index(n) for n in wanted]
        shapes = shapes_all[rows].astype(np.float32)
        src = IctSource(neutral=data["neutral"].astype(np.float32), identity=shapes[:k_id], expressions=shapes[k_id:],
                        expression_names=names, uvs=data["uv"].astype(np.float32),
                        face_start=data["face_vertex_start"].astype(np.int32), face_v=data["face_v"].astype(np.int32),
                        face_vt=data["face_vt"].astype(np.int32), face_material=data["face_material"].astype(np.int32),
                        material_names=[str(s) for s in data["material_names"]], vertex_indices=vertex_indices,
                        license=find_license(folder), origin=str(path))
    return src


def read_ict_source(path: str | os.PathLike, **kwargs) -> IctSource:
    """A FaceXModel folder, a folder holding one (e.g. the ICT-FaceKit checkout), or a pack folder/file."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return read_pack(path, **kwargs)
    if (path / PACK_FILE).is_file():
        return read_pack(path, **kwargs)
    if (path / NEUTRAL_OBJ).is_file():
        return read_facex_folder(path, **kwargs)
    if (path / "FaceXModel" / NEUTRAL_OBJ).is_file():
        return read_facex_folder(path / "FaceXModel", **kwargs)
    raise ModelFormatError(f"{path}: neither an ICT FaceXModel folder ({NEUTRAL_OBJ}, vertex_indices.json, shape OBJs) "
                           f"nor an ICT pack folder ({PACK_FILE} + LICENSE)")


# ---- conversion -------------------------------------------------------------------------------------------

def check_landmarks(neutral: np.ndarray, landmarks: np.ndarray, what: str = "model") -> None:
    """Raise ModelFormatError unless the 68 landmarks sit in iBUG order in our frame (+X subject's left,
    +Y up, +Z out of the face): jaw from the subject's right (-X) to left, eyes above the mouth, right eye at
    -X, and the nose tip the most forward landmark."""
    p = neutral[np.asarray(landmarks)]
    problems = []
    if p.shape != (68, 3):
        raise ModelFormatError(f"{what}: expected 68 landmarks, got {p.shape[0]}")
    if not p[0, 0] < p[8, 0] < p[16, 0]:
        problems.append("jaw (0-16) does not run from the subject's right (-X) to left (+X)")
    eyes, mouth = p[36:48], p[48:68]
    if not eyes[:, 1].min() > mouth[:, 1].max():
        problems.append("eyes (36-47) are not above the mouth (48-67): +Y is not up")
    if not (p[36:42, 0].mean() < 0 < p[42:48, 0].mean()):
        problems.append("right eye (36-41) is not at -X / left eye (42-47) not at +X")
    if not p[17:27, 1].mean() > eyes[:, 1].mean():
        problems.append("brows (17-26) are not above the eyes")
    if not (p[27, 1] > p[30, 1] and p[30, 1] > mouth[:, 1].max()):
        problems.append("nose (27-35) is not between the eyes and the mouth")
    if int(np.argmax(p[:, 2])) not in (30, 31, 32, 33, 34, 35):
        problems.append("the nose tip is not the most forward landmark: +Z does not point out of the face")
    if problems:
        raise ModelFormatError(f"{what}: landmarks fail the iBUG-order / axes check: " + "; ".join(problems))


def head_centre(neutral: np.ndarray, landmarks: np.ndarray, back_z: float | None = None) -> np.ndarray:
    """The origin used for ICT: x = 0 (symmetry plane), y = eye level, z = half-way between the back of the
    skull (`back_z`, default the smallest z) and the nose tip."""
    p = neutral[landmarks]
    y = p[[36, 39, 42, 45], 1].mean()
    front = neutral[:, 2].max()  # the nose tip
    back = neutral[:, 2].min() if back_z is None else back_z
    return np.array([0.0, y, 0.5 * (front + back)], dtype=np.float64)


def convert_ict(src: IctSource, *, with_albedo: bool = True) -> MorphableModel:
    """IctSource (upstream numbering) -> MorphableModel (kept parts only, re-indexed, centred)."""
    if src.neutral.shape != (UPSTREAM_VERTICES, 3):
        raise ModelFormatError(
            f"{src.origin}: the neutral mesh has {len(src.neutral)} vertices, ICT has {UPSTREAM_VERTICES}")
    kept_ids = [src.material_names.index(m) for m in KEPT_MATERIALS if m in src.material_names]
    if len(kept_ids) != len(KEPT_MATERIALS):
        raise ModelFormatError(f"{src.origin}: OBJ lacks materials {set(KEPT_MATERIALS) - set(src.material_names)}")
    faces = np.flatnonzero(np.isin(src.face_material, kept_ids))
    fs = src.face_start.astype(np.int64)
    sizes = fs[faces + 1] - fs[faces]
    corner_idx = np.repeat(fs[faces], sizes) + (np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    poly_v_old = src.face_v[corner_idx]
    poly_vt_old = src.face_vt[corner_idx]
    used = np.unique(poly_v_old)
    new_of_old = np.full(UPSTREAM_VERTICES, -1, dtype=np.int64)
    new_of_old[used] = np.arange(len(used))
    used_vt = np.unique(poly_vt_old)
    new_vt = np.full(len(src.uvs), -1, dtype=np.int64)
    new_vt[used_vt] = np.arange(len(used_vt))
    polygon_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    polygon_vertices = new_of_old[poly_v_old].astype(np.int32)
    polygon_uvs = new_vt[poly_vt_old].astype(np.int32)
    triangles = fan_triangulate(polygon_start, polygon_vertices)

    landmarks_old = np.asarray(src.vertex_indices["idx_to_landmark_verts"], dtype=np.int64)
    if landmarks_old.shape != (68,) or np.any(new_of_old[landmarks_old] < 0):
        raise ModelFormatError(f"{src.origin}: vertex_indices.json idx_to_landmark_verts is not 68 kept vertex ids")
    landmarks = new_of_old[landmarks_old].astype(np.int32)

    neutral_old = src.neutral.astype(np.float64)
    check_landmarks(neutral_old, landmarks_old, f"ICT ({src.origin})")
    centre = head_centre(neutral_old[used], landmarks)
    neutral = (neutral_old[used] - centre).astype(np.float32)
    identity = (src.identity[:, used] - src.neutral[used]).astype(np.float32)
    expression = (src.expressions[:, used] - src.neutral[used]).astype(np.float32)

    parts = {}
    for name, (lo, hi) in UPSTREAM_PARTS.items():
        old = np.zeros(UPSTREAM_VERTICES, dtype=bool)
        old[lo:hi + 1] = True
        parts[name] = old[used]
    # sclera / iris split of the eyeballs, from the materials
    for part, mats in (("sclera", ("M_ScleraLeft", "M_ScleraRight")), ("iris", ("M_IrisLeft", "M_IrisRight"))):
        ids = [src.material_names.index(m) for m in mats]
        fsel = np.flatnonzero(np.isin(src.face_material, ids))
        s = fs[fsel]
        n = fs[fsel + 1] - s
        cidx = np.repeat(s, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        mask = np.zeros(UPSTREAM_VERTICES, dtype=bool)
        mask[src.face_v[cidx]] = True
        parts[part] = mask[used]
    parts["eye_socket"] = parts.pop("eye_socket_left") | parts.pop("eye_socket_right")
    parts["eyeball"] = parts.pop("eyeball_left") | parts.pop("eyeball_right")
    regions = {
        "face_skin": parts["face"],
        "eyes": parts["eyeball"],
        "mouth_interior": parts["mouth_socket"] | parts["gums_tongue"] | parts["teeth"],
        "head_neck": parts["head_neck"],
    }
    if with_albedo:
        from .albedo import build_albedo

        albedo_mean, albedo_basis, albedo_names = build_albedo(neutral, landmarks, parts)
    else:
        albedo_mean = np.full_like(neutral, 0.5)
        albedo_basis = np.zeros((0,) + neutral.shape, np.float32)
        albedo_names = []
    meta = {
        "source": "ICT-FaceKit (ICT Face Model Light), github.com/ICT-VGL/ICT-FaceKit",
        "converter_version": CONVERTER_VERSION,
        "commit": ICT_COMMIT, "read_from": src.origin, "units": "cm",
        "frame": "+X subject's left, +Y up, +Z out of the face",
        "origin": "head centre: x on the symmetry plane, y at eye level (mean of landmarks 36, 39, 42, 45), "
               "z half-way between the back of the skull and the nose tip",
        "upstream_translation_cm": [float(-c) for c in centre],
        "kept_materials": list(KEPT_MATERIALS),
        "upstream_vertex_range": [int(used[0]), int(used[-1]) + 1] if len(used) == used[-1] - used[0] + 1 else None,
        "albedo": "stylerig procedural albedo (docs/face-model.md); ICT has no albedo model",
    }
    model = MorphableModel(
        name=MODEL_NAME, neutral=neutral, identity_basis=identity, expression_basis=expression,
        expression_names=list(src.expression_names), expression_prior="blendshape",
        albedo_mean=albedo_mean, albedo_basis=albedo_basis, albedo_names=albedo_names,
        triangles=triangles, polygon_start=polygon_start, polygon_vertices=polygon_vertices,
        uvs=src.uvs[used_vt].astype(np.float32), polygon_uvs=polygon_uvs, landmarks=landmarks, regions=regions,
        notice="ICT Face Model Light, ICT-FaceKit (github.com/ICT-VGL/ICT-FaceKit), MIT licence:\n\n"
               + src.license.strip() + "\n",
        meta=meta)
    model.validate()
    return model


def import_ict(path: str | os.PathLike, **kwargs) -> MorphableModel:
    """Read an ICT source (FaceXModel folder or pack) and convert it."""
    with_albedo = kwargs.pop("with_albedo", True)
    return convert_ict(read_ict_source(path, **kwargs), with_albedo=with_albedo)
