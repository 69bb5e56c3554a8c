"""The ICT Face Model Light importer, the default model and its albedo."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SHARED_DIR

from stylerig_engine import facemodel
from stylerig_engine.facemodel import ModelFormatError, ModelNotAvailableError, MorphableModel
from stylerig_engine.facemodel.albedo import ALBEDO_NAMES, linear_to_srgb
from stylerig_engine.facemodel.ict import (
    CONVERTER_VERSION,
    KEPT_MATERIALS,
    check_landmarks,
    import_ict,
    read_facex_folder,
    read_pack,
)

ICT = SHARED_DIR / "assets" / "ict-facekit"
FACEX = ICT / "FaceXModel"
pytestmark = pytest.mark.skipif(not (ICT / "ict_face_light_pack.npz").is_file(),
                                reason=f"shared ICT pack not found at {ICT}")


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return import_ict(ICT)


@pytest.fixture(scope="module")
def raw():
    with np.load(ICT / "ict_face_light_pack.npz") as d:
        out = {k: d[k] for k in ("neutral", "uv", "face_vertex_start", "face_v", "face_vt", "face_material")}
        out["names"] = [str(s) for s in d["shape_names"]]
        out["materials"] = [str(s) for s in d["material_names"]]
        out["vi"] = json.loads(str(d["vertex_indices_json"]))
        rows = [out["names"].index(n) for n in ("identity000", "identity099", "jawOpen", "eyeBlink_L")]
        out["shapes"] = dict(zip(("identity000", "identity099", "jawOpen", "eyeBlink_L"), d["shapes"][rows]))
    return out


def test_sizes_and_names(model, raw):
    model.validate()
    assert model.name == "ict-face-light"
    assert model.num_vertices == 24591  # vertices of the kept parts (upstream 0..24590)
    assert model.triangles.shape == (48836, 3)
    assert len(model.polygon_start) - 1 == 24692  # upstream polygons 0..24691, quads kept
    assert model.num_identity == 100
    expected = [n for n in raw["vi"]["expressions"] if not n.startswith("PupilDilate")]
    assert model.expression_names == expected and model.num_expression == 53
    assert model.expression_prior == "blendshape"
    assert model.albedo_names == list(ALBEDO_NAMES) and model.num_albedo == 10
    # every vertex is used by a triangle: nothing dangling after dropping the overlay layers
    assert np.unique(model.triangles).size == model.num_vertices


def test_bases_are_shape_minus_neutral(model, raw):
    v = model.num_vertices  # the kept vertices are upstream 0..V-1, in order
    assert model.meta["upstream_vertex_range"] == [0, v]
    for name, basis in (("identity000", model.identity_basis[0]), ("identity099", model.identity_basis[99]),
                        ("jawOpen", model.expression_basis[model.expression_names.index("jawOpen")]),
                        ("eyeBlink_L", model.expression_basis[model.expression_names.index("eyeBlink_L")])):
        np.testing.assert_array_equal(basis, raw["shapes"][name][:v] - raw["neutral"][:v])
    shift = np.asarray(model.meta["upstream_translation_cm"], np.float32)
    np.testing.assert_allclose(model.neutral, raw["neutral"][:v] + shift, atol=1e-5)
    jaw = model.expression_basis[model.expression_names.index("jawOpen")]
    chin = model.landmarks[8]
    assert jaw[chin, 1] < -1.0  # opening the jaw moves the chin down by more than a centimetre


def test_frame_landmarks_and_centre(model, raw):
    n, lm = model.neutral, model.landmarks
    np.testing.assert_array_equal(lm, raw["vi"]["idx_to_landmark_verts"])  # no re-indexing below 24591
    check_landmarks(n, lm)
    p = n[lm]
    assert int(np.argmax(p[:, 2])) == 30  # nose tip is the most forward landmark
    assert p[36:48, 1].min() > p[48:68, 1].max()  # eyes above the mouth
    assert p[0, 0] < 0 < p[16, 0]  # jaw starts on the subject's right (-X)
    # origin: symmetry plane, eye level, half-way between skull back and nose tip
    assert abs(n[:, 0].min() + n[:, 0].max()) < 1e-3
    assert abs(p[[36, 39, 42, 45], 1].mean()) < 1e-4
    assert abs(n[:, 2].min() + n[:, 2].max()) < 1e-3
    assert 20 < n[:, 2].max() - n[:, 2].min() < 25  # ~22 cm front to back: centimetres
    assert 8 < np.linalg.norm(p[36] - p[45]) < 11  # outer eye corners ~9.5 cm apart


def test_winding_is_counter_clockwise_from_outside(model):
    n, t = model.neutral, model.triangles
    face_tri = t[model.regions["face_skin"][t].all(1)]
    a, b, c = n[face_tri[:, 0]], n[face_tri[:, 1]], n[face_tri[:, 2]]
    normal = np.cross(b - a, c - a)
    centroid = (a + b + c) / 3
    outward = np.einsum("ij,ij->i", normal, centroid - np.array([0.0, 0.0, 0.0]))
    assert (outward > 0).mean() > 0.8
    # the triangles around the nose tip face the camera (+Z)
    tip = model.landmarks[30]
    near = (face_tri == tip).any(1)
    assert np.all(normal[near, 2] > 0)


def test_polygons_keep_quads_and_uvs(model, raw):
    sizes = np.diff(model.polygon_start)
    assert set(np.unique(sizes)) == {3, 4} and (sizes == 4).mean() > 0.9
    # same corners and uvs as the upstream polygons of the kept materials
    kept = np.isin(raw["face_material"], [raw["materials"].index(m) for m in KEPT_MATERIALS])
    fs = raw["face_vertex_start"]
    faces = np.flatnonzero(kept)
    corners = np.concatenate([np.arange(fs[f], fs[f + 1]) for f in faces])
    np.testing.assert_array_equal(model.polygon_vertices, raw["face_v"][corners])
    np.testing.assert_array_equal(model.uvs[model.polygon_uvs], raw["uv"][raw["face_vt"][corners]])
    assert len(model.triangles) == int((sizes - 2).sum())


def test_regions(model, raw):
    r = model.regions
    assert set(r) == {"face_skin", "eyes", "mouth_interior", "head_neck"}
    assert r["face_skin"].sum() == 9409 and np.all(r["face_skin"][:9409])
    assert r["head_neck"].sum() == 1839 and np.all(r["head_neck"][9409:11248])
    assert r["eyes"].sum() == 24591 - 21451 and np.all(r["eyes"][21451:])
    assert np.all(r["mouth_interior"][11248:13294]) and np.all(r["mouth_interior"][14062:21451])
    total = sum(m.astype(int) for m in r.values())
    assert total.max() == 1  # disjoint
    assert np.count_nonzero(total == 0) == 14062 - 13294  # only the eye sockets are in no region
    lm = model.landmarks
    assert r["face_skin"][lm].all()


def test_albedo_colours(model):
    a, r = model.albedo_mean, model.regions
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    skin = np.median(a[r["face_skin"]], axis=0)
    assert skin[0] > skin[1] > skin[2] > 0.05  # skin: red > green > blue
    srgb = linear_to_srgb(skin)
    assert 0.6 < srgb[0] < 0.85  # a medium skin tone
    eyes = a[r["eyes"]]
    assert np.percentile(eyes.mean(1), 90) > 0.6  # sclera white-ish
    assert eyes.mean(1).min() < 0.01  # pupils black
    mouth = a[r["mouth_interior"]]
    assert np.median(mouth[:, 0]) > np.median(mouth[:, 1])  # reddish mouth interior
    lips = model.landmarks[[51, 57]]
    cheek = model.landmarks[[2, 14]]
    ratio = lambda ids: (a[ids, 0] / a[ids, 1]).mean()
    assert ratio(lips) > ratio(cheek) * 1.2  # lips redder than the cheeks


def test_albedo_basis_ranges(model):
    a, b, r = model.albedo_mean, model.albedo_basis, model.regions
    skin = r["face_skin"] | r["head_neck"]
    assert np.all(b[:, ~skin] == 0)  # eyes, teeth, mouth: fixed colours
    for k in range(model.num_albedo):
        assert np.abs(b[k]).max() > 0.005, model.albedo_names[k]
        for s in (-2.5, 2.5):
            x = a + s * b[k]
            assert x.min() >= 0 and x.max() <= 1, (model.albedo_names[k], s)
    light = a + 2 * b[0]
    dark = a - 2 * b[0]
    assert np.all(light[skin] > a[skin]) and np.all(dark[skin] < 0.55 * a[skin])
    rng = np.random.default_rng(0)
    c = rng.standard_normal((50, model.num_albedo)).astype(np.float32)
    x = a[None, skin] + np.einsum("nk,kvc->nvc", c, b[:, skin])
    assert ((x >= 0) & (x <= 1)).mean() > 0.98
    # local terms stay local: the lips term is zero on the forehead and strong on the lips
    lips_k = model.albedo_names.index("lips")
    assert np.abs(b[lips_k, model.landmarks[57]]).max() > 10 * np.abs(b[lips_k, model.landmarks[27]]).max()


def test_save_load_round_trip(model, tmp_path):
    """(Load speed is a benchmark, not a test: benchmarks/facemodel.py, docs/benchmarks.md.)"""
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = MorphableModel.load(path)
    np.testing.assert_array_equal(loaded.neutral, model.neutral)
    np.testing.assert_array_equal(loaded.triangles, model.triangles)
    np.testing.assert_allclose(loaded.identity_basis, model.identity_basis, atol=2e-3)  # float16
    np.testing.assert_allclose(loaded.albedo_basis, model.albedo_basis, atol=1e-3)
    assert loaded.notice == model.notice and "MIT License" in loaded.notice
    assert {k: v.sum() for k, v in loaded.regions.items()} == {k: v.sum() for k, v in model.regions.items()}



@pytest.mark.skipif(not FACEX.is_dir(), reason="upstream FaceXModel sample not in ../shared")
def test_upstream_folder_import_equals_pack_import(tmp_path):
    sub = {"num_identity": 1, "expressions": ["eyeBlink_L", "jawOpen"]}
    from_folder = import_ict(FACEX, **sub)
    from_pack = import_ict(ICT, **sub)
    for k in ("neutral", "identity_basis", "expression_basis", "albedo_mean", "albedo_basis", "triangles",
              "polygon_start", "polygon_vertices", "uvs", "polygon_uvs", "landmarks"):
        np.testing.assert_array_equal(getattr(from_folder, k), getattr(from_pack, k), err_msg=k)
    assert from_folder.expression_names == ["eyeBlink_L", "jawOpen"]
    assert "MIT License" in from_folder.notice  # LICENSE found in the folder's parent
    # the full model needs every shape OBJ
    with pytest.raises(ModelFormatError, match=r"missing ICT shape files.*stylerig assets fetch ict"):
        read_facex_folder(FACEX)
    # no LICENSE anywhere near: refuse (the MIT notice must travel with the data)
    lonely = tmp_path / "a" / "FaceXModel"
    lonely.mkdir(parents=True)
    for f in ("generic_neutral_mesh.obj", "vertex_indices.json", "jawOpen.obj"):
        shutil.copy(FACEX / f, lonely / f)
    with pytest.raises(ModelFormatError, match="LICENSE"):
        read_facex_folder(lonely, num_identity=0, expressions=["jawOpen"])


def test_bad_sources(tmp_path):
    with pytest.raises(ModelFormatError, match="neither an ICT FaceXModel folder"):
        import_ict(tmp_path)
    (tmp_path / "ict_face_light_pack.npz").write_bytes(b"not a zip")
    (tmp_path / "LICENSE").write_text("MIT")
    with pytest.raises(ModelFormatError, match="not a readable ICT pack"):
        read_pack(tmp_path)
    with pytest.raises(ModelFormatError, match="unknown ICT expressions"):
        read_pack(ICT, num_identity=0, expressions=["smile"])


def test_landmark_check_rejects_other_frames(model):
    n = model.neutral.astype(np.float64)
    with pytest.raises(ModelFormatError, match="Y is not up"):
        check_landmarks(n * [1, -1, 1], model.landmarks)
    with pytest.raises(ModelFormatError, match="Z does not point out"):
        check_landmarks(n * [-1, 1, -1], model.landmarks)
    with pytest.raises(ModelFormatError, match="subject's right"):
        check_landmarks(n * [-1, 1, 1], model.landmarks)


def test_load_default_model_builds_caches_and_loads_from_them(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLERIG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STYLERIG_ICT_SOURCE", str(ICT))
    path = facemodel.default_model_path()
    assert path == tmp_path / "cache" / "models" / "ict-face-light.npz"
    first = facemodel.load_default_model()
    assert path.is_file() and path.with_suffix(".NOTICE.txt").read_text().count("MIT License") == 1
    again = facemodel.load_default_model()  # from the cache (its speed: benchmarks/facemodel.py)
    np.testing.assert_array_equal(again.neutral, first.neutral)
    assert again.num_expression == 53
    assert facemodel.load_model("ict-face-light").num_vertices == first.num_vertices
    # a damaged cache file is rebuilt from the source
    path.write_bytes(b"garbage")
    assert facemodel.load_default_model().num_vertices == first.num_vertices
    # so is one written by another converter version
    stale = MorphableModel.load(path)
    stale.meta["converter_version"] = -1
    stale.save(path)
    assert facemodel.load_default_model().meta["converter_version"] == CONVERTER_VERSION
    assert MorphableModel.load(path).meta["converter_version"] == CONVERTER_VERSION


def test_load_default_model_without_any_source(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLERIG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STYLERIG_ICT_SOURCE", raising=False)
    monkeypatch.setattr(facemodel, "shared_ict_pack", lambda: tmp_path / "nowhere")
    with pytest.raises(ModelNotAvailableError, match="stylerig assets fetch ict"):
        facemodel.load_default_model()
    with pytest.raises(ModelNotAvailableError, match="no model named"):
        facemodel.load_model("nope")
