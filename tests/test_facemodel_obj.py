"""The OBJ reader on the real upstream ICT files (checked against the pre-extracted pack) and on edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DIR

from stylerig_engine.facemodel.obj import (
    ObjError,
    fan_triangulate,
    format_obj,
    parse_obj,
    read_obj,
    read_obj_vertices,
)

ICT = SHARED_DIR / "assets" / "ict-facekit"
FACEX = ICT / "FaceXModel"
needs_ict = pytest.mark.skipif(not (ICT / "ict_face_light_pack.npz").is_file() or not FACEX.is_dir(),
                               reason=f"shared ICT data not found at {ICT}")


@pytest.fixture(scope="module")
def pack():
    with np.load(ICT / "ict_face_light_pack.npz") as d:
        names = [str(s) for s in d["shape_names"]]
        wanted = ["identity000", "jawOpen", "eyeBlink_L"]
        yield {
            "neutral": d["neutral"], "uv": d["uv"], "face_vertex_start": d["face_vertex_start"],
            "face_v": d["face_v"], "face_vt": d["face_vt"], "face_material": d["face_material"],
            "material_names": [str(s) for s in d["material_names"]],
            "shapes": {n: d["shapes"][names.index(n)] for n in wanted},
        }


@needs_ict
def test_neutral_obj_equals_pack_exactly(pack):
    mesh = read_obj(FACEX / "generic_neutral_mesh.obj")
    assert mesh.vertices.dtype == np.float32 and mesh.vertices.shape == (26719, 3)
    np.testing.assert_array_equal(mesh.vertices, pack["neutral"])
    np.testing.assert_array_equal(mesh.uvs, pack["uv"])
    np.testing.assert_array_equal(mesh.face_start, pack["face_vertex_start"])
    np.testing.assert_array_equal(mesh.face_v, pack["face_v"])
    np.testing.assert_array_equal(mesh.face_vt, pack["face_vt"])
    np.testing.assert_array_equal(mesh.face_material, pack["face_material"])
    assert mesh.material_names == pack["material_names"]
    assert mesh.normals.shape == (0, 3) and np.all(mesh.face_vn == -1)
    assert set(np.unique(mesh.face_sizes())) == {3, 4}
    assert mesh.header.startswith("####") and mesh.header.endswith("mtllib ICTFaceModelMaterial.mtl")


@needs_ict
@pytest.mark.parametrize("name", ["identity000", "jawOpen", "eyeBlink_L"])
def test_shape_objs_equal_pack(pack, name):
    full = read_obj(FACEX / f"{name}.obj")
    np.testing.assert_array_equal(full.vertices, pack["shapes"][name])
    np.testing.assert_array_equal(full.face_v, pack["face_v"])  # same topology as the neutral
    np.testing.assert_array_equal(read_obj_vertices(FACEX / f"{name}.obj"), pack["shapes"][name])


@needs_ict
@pytest.mark.parametrize("name", ["generic_neutral_mesh", "jawOpen"])
def test_writer_reproduces_upstream_bytes(name):
    text = (FACEX / f"{name}.obj").read_text()
    assert format_obj(parse_obj(text)) == text


@needs_ict
def test_writer_with_replaced_vertices_round_trips(pack):
    mesh = read_obj(FACEX / "generic_neutral_mesh.obj")
    again = parse_obj(format_obj(mesh, pack["shapes"]["jawOpen"]))
    np.testing.assert_array_equal(again.vertices, pack["shapes"]["jawOpen"])
    np.testing.assert_array_equal(again.face_vt, mesh.face_vt)


def test_corner_formats_negative_indices_and_materials():
    text = "\n".join([  # noqa: FLY002
        "# comment", "mtllib x.mtl", "o thing",
        "v 0 0 0", "v 1 0 0", "v 1 1 0", "v 0 1 0 0.5 0.5 0.5",  # vertex colour columns are ignored
        "vt 0 0", "vt 1 0 0", "vt 1 1", "vt 0 1",  # 3-component vt keeps u, v
        "vn 0 0 1",
        "usemtl A", "f 1/1/1 2/2/1 3/3/1 4/4/1",
        "usemtl B", "f -4/-4/-1 -3/-3/-1 -2/-2/-1",  # relative indices
        "usemtl A", "f 1/1/1 3/3/1 4/4/1",
        "",
    ])
    m = parse_obj(text)
    np.testing.assert_array_equal(m.vertices[3], [0, 1, 0])
    np.testing.assert_array_equal(m.uvs[1], [1, 0])
    np.testing.assert_array_equal(m.face_start, [0, 4, 7, 10])
    np.testing.assert_array_equal(m.face_v, [0, 1, 2, 3, 0, 1, 2, 0, 2, 3])
    np.testing.assert_array_equal(m.face_vt, [0, 1, 2, 3, 0, 1, 2, 0, 2, 3])
    np.testing.assert_array_equal(m.face_vn, [0] * 10)
    assert m.material_names == ["A", "B"]
    np.testing.assert_array_equal(m.face_material, [0, 1, 0])


def test_v_and_v_slash_slash_vn_corners():
    m = parse_obj("v 0 0 0\nv 1 0 0\nv 0 1 0\nvn 0 0 1\nf 1 2 3\n")
    np.testing.assert_array_equal(m.face_v, [0, 1, 2])
    assert np.all(m.face_vt == -1) and np.all(m.face_vn == -1)
    np.testing.assert_array_equal(m.face_material, [-1])
    m = parse_obj("v 0 0 0\nv 1 0 0\nv 0 1 0\nvn 0 0 1\nf 1//1 2//1 3//1\n")
    assert np.all(m.face_vt == -1)
    np.testing.assert_array_equal(m.face_vn, [0, 0, 0])


def test_relative_indices_follow_file_order():
    # the second face's -1 refers to the vertex defined just before it, not the last one of the file
    m = parse_obj("v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3 -2 -1\nv 5 5 5\nf 1 2 -1\n")
    np.testing.assert_array_equal(m.face_v, [0, 1, 2, 0, 1, 3])


def test_errors():
    with pytest.raises(ObjError, match="does not have"):
        parse_obj("v 0 0 0\nv 1 0 0\nf 1 2 3\n")
    with pytest.raises(ObjError, match="mix corner formats"):
        parse_obj("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2 3\n")
    with pytest.raises(ObjError, match="fewer than 3 numbers"):
        parse_obj("v 0 0\n")
    with pytest.raises(ObjError, match="fewer than 3 corners"):
        parse_obj("v 0 0 0\nv 1 0 0\nf 1 2\n")


def test_read_obj_names_the_file(tmp_path):
    p = tmp_path / "bad.obj"
    p.write_text("v 0 0 0\nf 1 2 3\n")
    with pytest.raises(ObjError, match="bad.obj"):
        read_obj(p)


def test_fan_triangulation_keeps_winding():
    start = np.array([0, 3, 7, 12])
    corners = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    tri = fan_triangulate(start, corners)
    np.testing.assert_array_equal(tri, [[0, 1, 2], [3, 4, 5], [3, 5, 6], [7, 8, 9], [7, 9, 10], [7, 10, 11]])
    np.testing.assert_array_equal(fan_triangulate(start, corners, np.array([1])), [[3, 4, 5], [3, 5, 6]])
