"""A fast reader (and a matching writer) for Wavefront OBJ meshes such as the ICT FaceKit files.

Supported records: ``v`` (positions; extra colour columns are ignored), ``vt`` (the first two numbers are
kept), ``vn``, ``f`` (polygons of any size with ``v``, ``v/vt``, ``v//vn`` or ``v/vt/vn`` corners, 1-based or
negative/relative indices) and ``usemtl``; comments and everything else (``mtllib``, ``o``, ``g``, ``s``) are
skipped. Parsing works on whole blocks of lines with numpy, so a 2.5 MB ICT shape parses in ~0.1-0.2 s.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .model import ModelFormatError


class ObjError(ModelFormatError):
    """An OBJ file that cannot be read (bad records, indices outside the file's vertices)."""


@dataclass
class ObjMesh:
    vertices: np.ndarray  # (V, 3) float32
    uvs: np.ndarray  # (T, 2) float32, `vt` records in file order
    normals: np.ndarray  # (N, 3) float32, `vn` records in file order
    face_start: np.ndarray  # (F + 1,) int32 offsets into the flat corner lists
    face_v: np.ndarray  # (C,) int32, 0-based vertex index of each corner
    face_vt: np.ndarray  # (C,) int32, 0-based uv index of each corner, -1 where the corner has none
    face_vn: np.ndarray  # (C,) int32, 0-based normal index of each corner, -1 where the corner has none
    face_material: np.ndarray  # (F,) int32 into material_names, -1 before the first `usemtl`
    material_names: list[str] = field(default_factory=list)
    header: str = ""  # the leading comment block and `mtllib` lines, verbatim (kept by write_obj)

    @property
    def num_faces(self) -> int:
        return len(self.face_start) - 1

    def face_sizes(self) -> np.ndarray:
        return np.diff(self.face_start)

    def triangles(self, faces: np.ndarray | None = None) -> np.ndarray:
        """(T, 3) int32 fan triangulation (a, b, c), (a, c, d), ... of the given faces (default all)."""
        return fan_triangulate(self.face_start, self.face_v, faces)


def fan_triangulate(face_start: np.ndarray, corners: np.ndarray, faces: np.ndarray | None = None) -> np.ndarray:
    """Fan-triangulate polygons given as offsets + flat corner list; keeps each polygon's winding."""
    face_start = np.asarray(face_start, dtype=np.int64)
    if faces is None:
        faces = np.arange(len(face_start) - 1)
    faces = np.asarray(faces, dtype=np.int64)
    start = face_start[faces]
    size = face_start[faces + 1] - start
    if np.any(size < 3):
        raise ObjError("polygon with fewer than 3 corners")
    n_tri = size - 2
    face_of_tri = np.repeat(np.arange(len(faces)), n_tri)
    k = np.arange(n_tri.sum()) - np.repeat(np.cumsum(n_tri) - n_tri, n_tri)  # 0.. within each polygon
    base = start[face_of_tri]
    tri = np.stack([corners[base], corners[base + k + 1], corners[base + k + 2]], axis=1)
    return tri.astype(np.int32)


def _floats(lines: list[str], prefix_len: int, columns: int, what: str) -> np.ndarray:
    if not lines:
        return np.zeros((0, columns), dtype=np.float32)
    text = "\n".join(s[prefix_len:] for s in lines)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        flat = np.fromstring(text, dtype=np.float64, sep=" ")
    if flat.size == len(lines) * columns:
        return flat.reshape(-1, columns).astype(np.float32)
    # Rows of uneven width (vertex colours, 3-component vt, ...): fall back to a per-line parse.
    rows = []
    for s in lines:
        parts = s[prefix_len:].split()
        if len(parts) < columns:
            raise ObjError(f"{what} record with fewer than {columns} numbers: {s!r}")
        rows.append(parts[:columns])
    try:
        return np.asarray(rows, dtype=np.float64).astype(np.float32)
    except ValueError as e:
        raise ObjError(f"bad number in {what} records: {e}") from e


def _face_corners(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (sizes (F,), corner fields (C, 3) int64 with 0 where a field is absent)."""
    split = [s[2:].split() for s in lines]
    sizes = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
    tokens = [t for corners in split for t in corners]
    first = tokens[0] if tokens else ""
    fields = first.count("/") + 1
    joined = " ".join(tokens)
    if joined.count("/") != (fields - 1) * len(tokens):
        raise ObjError("face records mix corner formats (v, v/vt, v//vn, v/vt/vn)")
    text = joined.replace("//", "/0/").replace("/", " ")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        flat = np.fromstring(text, dtype=np.int64, sep=" ")
    if flat.size != fields * len(tokens):
        raise ObjError("bad index in face records")
    out = np.zeros((len(tokens), 3), dtype=np.int64)
    out[:, :fields] = flat.reshape(-1, fields)
    return sizes, out


def _resolve(index: np.ndarray, count_before: np.ndarray, total: int, what: str) -> np.ndarray:
    """1-based / negative OBJ indices -> 0-based; 0 (absent) -> -1."""
    out = np.where(index > 0, index - 1, np.where(index < 0, count_before + index, -1))
    if np.any((index != 0) & ((out < 0) | (out >= total))):
        raise ObjError(f"face refers to a {what} that the file does not have")
    return out.astype(np.int32)


def parse_obj(text: str) -> ObjMesh:
    """Parse OBJ text (see the module docstring for what is kept)."""
    lines = text.splitlines()
    v_lines, vt_lines, vn_lines, f_lines = [], [], [], []
    v_at, vt_at, vn_at, f_at, mtl_at, mtl_names = [], [], [], [], [], []
    header: list[str] = []
    in_header = True
    for i, s in enumerate(lines):
        c = s[:2]
        if c == "v ":
            v_lines.append(s)
            v_at.append(i)
        elif c == "f ":
            f_lines.append(s)
            f_at.append(i)
        elif c == "vt":
            vt_lines.append(s)
            vt_at.append(i)
        elif c == "vn":
            vn_lines.append(s)
            vn_at.append(i)
        elif s.startswith("usemtl"):
            mtl_at.append(i)
            mtl_names.append(s[6:].strip())
        elif s[:1] == "\t" or c in ("v\t", "f\t"):
            raise ObjError(f"line {i + 1}: tab-separated records are not supported")
        if in_header:
            if s.startswith(("#", "mtllib")) or not s.strip():
                header.append(s)
            else:
                in_header = False
    vertices = _floats(v_lines, 2, 3, "v")
    uvs = _floats(vt_lines, 3, 2, "vt")
    normals = _floats(vn_lines, 3, 3, "vn")
    if f_lines:
        sizes, fields = _face_corners(f_lines)
        corner_line = np.repeat(np.asarray(f_at), sizes)
        v_before = np.searchsorted(np.asarray(v_at, dtype=np.int64), corner_line)
        vt_before = np.searchsorted(np.asarray(vt_at, dtype=np.int64), corner_line)
        vn_before = np.searchsorted(np.asarray(vn_at, dtype=np.int64), corner_line)
        face_v = _resolve(fields[:, 0], v_before, len(vertices), "vertex")
        if np.any(face_v < 0):
            raise ObjError("face corner without a vertex index")
        face_vt = _resolve(fields[:, 1], vt_before, len(uvs), "uv (vt)")
        face_vn = _resolve(fields[:, 2], vn_before, len(normals), "normal (vn)")
        if np.any(sizes < 3):
            raise ObjError("face with fewer than 3 corners")
        face_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    else:
        face_v = face_vt = face_vn = np.zeros(0, dtype=np.int32)
        face_start = np.zeros(1, dtype=np.int32)
    names: list[str] = []
    ids = []
    for n in mtl_names:
        if n not in names:
            names.append(n)
        ids.append(names.index(n))
    group = np.searchsorted(np.asarray(mtl_at, dtype=np.int64), np.asarray(f_at, dtype=np.int64)) - 1
    face_material = np.where(group >= 0, np.asarray(ids + [-1], dtype=np.int64)[group], -1).astype(np.int32)
    return ObjMesh(vertices=vertices, uvs=uvs, normals=normals, face_start=face_start, face_v=face_v,
                   face_vt=face_vt, face_vn=face_vn, face_material=face_material, material_names=names,
                   header="\n".join(header).rstrip("\n"))


def read_obj(path: str | os.PathLike) -> ObjMesh:
    """Read an OBJ file; raises ObjError (naming the file) when it cannot be parsed."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        return parse_obj(text)
    except ObjError as e:
        raise ObjError(f"{path}: {e}") from None


def read_obj_vertices(path: str | os.PathLike) -> np.ndarray:
    """Only the (V, 3) float32 `v` records of an OBJ file (what a blendshape file contributes)."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8", errors="replace")
    v_lines = [s for s in text.splitlines() if s[:2] == "v "]
    try:
        return _floats(v_lines, 2, 3, "v")
    except ObjError as e:
        raise ObjError(f"{path}: {e}") from None


def _format_rows(a: np.ndarray, prefix: str, number: str = "%.6g") -> str:
    """Rows of numbers; with "%.6g" (C++ stream default, as ICT writes) a value that would not read back as
    the same float32 gets up to 9 significant digits, so that writing then reading is lossless."""
    if len(a) == 0:
        return ""
    a32 = np.asarray(a, dtype=np.float32)
    flat = a32.reshape(-1).astype(np.float64)
    text = np.char.mod(number, flat).astype(object)
    if number == "%.6g":
        for digits in (7, 8, 9):
            bad = np.flatnonzero(text.astype(np.float64).astype(np.float32) != a32.reshape(-1))
            if not bad.size:
                break
            text[bad] = np.char.mod(f"%.{digits}g", flat[bad]).astype(object)
    text = text.reshape(a32.shape)
    line = prefix + " " + text[:, 0]
    for j in range(1, a32.shape[1]):
        line = line + " " + text[:, j]
    return "\n".join(line) + "\n"


def format_obj(mesh: ObjMesh, vertices: np.ndarray | None = None) -> str:
    """OBJ text in the ICT layout: header, `v` (6 significant digits), `vt` (6 decimals), `vn`, then the faces
    with a `usemtl` line wherever the material changes. Writing a parsed ICT file reproduces it byte for byte.

    `vertices` replaces the mesh positions (to write a blendshape with the same topology).
    """
    verts = mesh.vertices if vertices is None else np.asarray(vertices)
    parts = [mesh.header + "\n" if mesh.header else "", _format_rows(verts, "v"), _format_rows(mesh.uvs, "vt", "%.6f"),
             _format_rows(mesh.normals, "vn")]
    has_vt, has_vn = len(mesh.face_vt) and np.all(mesh.face_vt >= 0), len(mesh.face_vn) and np.all(mesh.face_vn >= 0)
    corner = (mesh.face_v + 1).astype(str).astype(object)
    if has_vt and has_vn:
        corner = corner + "/" + (mesh.face_vt + 1).astype(str).astype(object) + "/" + (mesh.face_vn + 1).astype(str)
    elif has_vt:
        corner = corner + "/" + (mesh.face_vt + 1).astype(str).astype(object)
    elif has_vn:
        corner = corner + "//" + (mesh.face_vn + 1).astype(str).astype(object)
    current = None
    for f in range(mesh.num_faces):
        m = int(mesh.face_material[f])
        if m != current and m >= 0:
            parts.append(f"usemtl {mesh.material_names[m]}\n")
            current = m
        parts.append("f " + " ".join(corner[mesh.face_start[f]:mesh.face_start[f + 1]]) + "\n")
    return "".join(parts)


def write_obj(path: str | os.PathLike, mesh: ObjMesh, vertices: np.ndarray | None = None) -> None:
    from ..fileio import atomic_write

    with atomic_write(path, "w") as f:
        f.write(format_obj(mesh, vertices))
