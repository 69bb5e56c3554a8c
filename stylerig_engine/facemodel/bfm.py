"""Importers for user-supplied Basel Face Model files (they cannot be redistributed; the user brings them).

Formats (field names and layouts as published; see docs/face-model.md for sources and reasoning):

* BFM 2009, ``01_MorphableModel.mat`` (MATLAB v5; v7.3/HDF5 also read): shapeMU (3N, 1), shapePC (3N, 199),
  shapeEV (199, 1), texMU (3N, 1), texPC (3N, 199), texEV (199, 1), tl (T, 3) 1-based triangles. Vectors are
  xyz-interleaved per vertex. Positions are in micrometres (a face is ~1.5e5 wide; Deep3DFaceRecon divides
  by 1e5 to get decimetres). The PCs are orthonormal and shapeEV/texEV are standard deviations (BFM's own
  coef2object computes mu + PC * (coef .* EV)), so basis = PC * EV gives N(0, 1) coefficients. Colours 0..255.
  Optional expressions: ``Exp_Pca.bin`` (Guo et al., as read by Deep3DFaceRecon/3DDFA: int32 exp_dim, then
  float32 expMU[3n], then float32 expPC[exp_dim][3n], component-major; n is not stored, it follows from the
  file size; n = 53215 for the published file) + ``std_exp.txt`` (exp_dim standard deviations). The published
  file covers 53215 of BFM's 53490 vertices: ``BFM_exp_idx.mat`` (``trimIndex``, 1-based) maps them, and the
  model is then cropped to those vertices, as Deep3DFaceRecon does. expMU is not used (Deep3DFaceRecon
  neither): coefficient 0 is the BFM neutral face.
* Deep3DFaceRecon ``BFM_model_front.mat``: meanshape (1, 3N) decimetres, idBase (3N, 80) and exBase (3N, 64)
  already scaled by their standard deviations (decimetres), meantex (1, 3N) and texBase (3N, 80) 0..255,
  tri (T, 3) 1-based, keypoints (1, 68) 1-based vertex ids.
* BFM 2017 ``model2017-1_*.h5`` (statismo): shape/model/{mean (3N,), pcaBasis (3N, K), pcaVariance (K,)},
  shape/representer/cells (3, T) 0-based, the same for color/ (values in [0, 1]) and expression/. Positions in
  millimetres. pcaBasis is orthonormal, so basis = pcaBasis * sqrt(pcaVariance) (a basis whose columns
  already have norm sqrt(variance) is detected and used as is). The expression model's mean is added to the
  neutral shape (it is part of the statismo model's mean).

Normalisation: centimetres, our axes (+X subject's left, +Y up, +Z out of the face; checked with the
landmarks, a file in another frame is an error), triangles counter-clockwise seen from the front, origin on
the symmetry plane at eye level, 11 cm behind the nose tip (about where ICT's head centre is), colours
treated as sRGB-encoded and converted to linear [0, 1] (the basis through the sRGB curve's slope at the mean).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .albedo import inside_polygon_xy, srgb_to_linear
from .ict import check_landmarks
from .model import ModelFormatError, MorphableModel

HEAD_CENTRE_BEHIND_NOSE_CM = 11.0
UNITS_CM = {"um": 1e-4, "mm": 0.1, "cm": 1.0, "dm": 10.0, "m": 100.0}
BFM_NOTICE = ("Basel Face Model (University of Basel). Not redistributable: the licence of the BFM applies to "
              "this converted model; it is for the use of the person who obtained the original files.")


# ---- reading helpers -------------------------------------------------------------------------------------

def _loadmat(path: Path, fields: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The named arrays of a MATLAB file (v5 via scipy, v7.3 via h5py), or ModelFormatError naming what is
    missing."""
    import scipy.io

    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    try:
        data = scipy.io.loadmat(str(path), variable_names=list(fields) + list(optional))
    except NotImplementedError:  # MATLAB v7.3 = HDF5; arrays come transposed
        import h5py

        try:
            with h5py.File(path, "r") as f:
                data = {k: np.asarray(f[k]).T for k in list(fields) + list(optional) if k in f}
        except Exception as e:
            raise ModelFormatError(f"{path}: not a readable MATLAB v7.3 file ({e})") from e
    except Exception as e:  # truncated, not a mat file, ...
        raise ModelFormatError(
            f"{path}: not a readable MATLAB file, truncated or damaged ({type(e).__name__}: {e})") from e
    missing = [k for k in fields if k not in data]
    if missing:
        raise ModelFormatError(f"{path}: missing fields {missing} (is this the right file?)")
    return {k: np.asarray(data[k]) for k in list(fields) + list(optional) if k in data}


def _vec(a: np.ndarray, n3: int | None, what: str, path: Path) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if n3 is not None and a.size != n3:
        raise ModelFormatError(f"{path}: {what} has {a.size} values, expected {n3}")
    if a.size % 3:
        raise ModelFormatError(f"{path}: {what} has {a.size} values, not a multiple of 3")
    return a


def _basis(pc: np.ndarray, n3: int, what: str, path: Path) -> np.ndarray:
    """(3N, K) -> (K, N, 3) float64."""
    pc = np.asarray(pc)
    if pc.ndim != 2 or pc.shape[0] != n3:
        raise ModelFormatError(f"{path}: {what} has shape {pc.shape}, expected ({n3}, K)")
    return pc.T.reshape(pc.shape[1], n3 // 3, 3).astype(np.float64)


def load_landmark_file(path: str | os.PathLike, *, one_based: bool = False) -> np.ndarray:
    """68 vertex ids in iBUG order from .npy, .json (a list, or {"landmarks": [...]}) or text (integers
    separated by spaces, commas or newlines)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            ids = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            d = json.loads(path.read_text())
            ids = d["landmarks"] if isinstance(d, dict) else d
        else:
            ids = [int(t) for t in path.read_text().replace(",", " ").split()]
    except (OSError, ValueError, KeyError) as e:
        raise ModelFormatError(f"{path}: not a landmark file ({e})") from e
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.shape != (68,):
        raise ModelFormatError(f"{path}: {ids.size} landmark ids, expected 68 (iBUG order)")
    return ids - 1 if one_based else ids


# ---- shared normalisation --------------------------------------------------------------------------------

def _linear_albedo(mean: np.ndarray, basis: np.ndarray, scale: float, colour_space: str):
    m = mean / scale
    b = basis / scale
    if colour_space == "srgb":
        c = np.clip(m, 0.0, 1.0)
        slope = np.where(c <= 0.04045, 1 / 12.92, 2.4 / 1.055 * ((c + 0.055) / 1.055) ** 1.4)
        return np.clip(srgb_to_linear(c), 0.0, 1.0), b * slope[None]
    if colour_space == "linear":
        return np.clip(m, 0.0, 1.0), b
    raise ValueError(f"colour_space must be 'srgb' or 'linear', not {colour_space!r}")


def build_pca_model(name: str, *, mean: np.ndarray, identity: np.ndarray, expression: np.ndarray,
                    albedo_mean: np.ndarray, albedo_basis: np.ndarray, triangles: np.ndarray,
                    landmarks: np.ndarray, unit_cm: float, colour_scale: float, colour_space: str = "srgb",
                    notice: str = BFM_NOTICE, meta: dict | None = None, source: str = "") -> MorphableModel:
    """Normalise a PCA face model given in file units: (V, 3) mean, (K, V, 3) bases with N(0, 1)
    coefficients, (T, 3) 0-based triangles, 68 landmark ids."""
    v = len(mean)
    tri = np.asarray(triangles, dtype=np.int64)
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ModelFormatError(f"{source}: triangles must be (T, 3), got {tri.shape}")
    if tri.size and (tri.min() < 0 or tri.max() >= v):
        raise ModelFormatError(f"{source}: triangle index outside the {v} vertices")
    landmarks = np.asarray(landmarks, dtype=np.int64)
    if landmarks.shape != (68,) or landmarks.min() < 0 or landmarks.max() >= v:
        raise ModelFormatError(f"{source}: landmarks must be 68 vertex ids in [0, {v})")
    neutral = mean * unit_cm
    check_landmarks(neutral, landmarks, f"{name} ({source})")
    size = np.linalg.norm(neutral[landmarks[36]] - neutral[landmarks[45]])
    if not 5.0 < size < 15.0:
        raise ModelFormatError(f"{source}: outer eye corners are {size:.3g} cm apart after converting units "
                               f"(x{unit_cm:g}); expected ~9 cm. Wrong units for this file?")
    lm = neutral[landmarks]
    centre = np.array([lm[27:31, 0].mean(), lm[[36, 39, 42, 45], 1].mean(),
                       lm[:, 2].max() - HEAD_CENTRE_BEHIND_NOSE_CM])
    neutral = neutral - centre
    # counter-clockwise seen from the front: the signed area projected on the XY plane must be positive
    a, b, c = neutral[tri[:, 0]], neutral[tri[:, 1]], neutral[tri[:, 2]]
    signed = np.cross(b - a, c - a)[:, 2].sum()
    if signed < 0:
        tri = tri[:, [0, 2, 1]]
    alb_mean, alb_basis = _linear_albedo(albedo_mean, albedo_basis, colour_scale, colour_space)
    eyes = inside_polygon_xy(neutral, neutral[landmarks[36:42]]) | inside_polygon_xy(neutral, neutral[landmarks[42:48]])
    eyes &= neutral[:, 2] > lm[36:48, 2].min() - 1.0 - centre[2]
    mouth = inside_polygon_xy(neutral, neutral[landmarks[60:68]]) \
        & (neutral[:, 2] > lm[60:68, 2].min() - 1.5 - centre[2])
    regions = {"face_skin": ~(eyes | mouth), "eyes": eyes, "mouth_interior": mouth, "head_neck": np.zeros(v, bool)}
    model = MorphableModel(
        name=name, neutral=neutral.astype(np.float32),
        identity_basis=(identity * unit_cm).astype(np.float32),
        expression_basis=(expression * unit_cm).astype(np.float32),
        expression_names=[f"exp{i:03d}" for i in range(len(expression))],
        expression_prior="gaussian",
        albedo_mean=alb_mean.astype(np.float32), albedo_basis=alb_basis.astype(np.float32),
        albedo_names=[f"tex{i:03d}" for i in range(len(albedo_basis))],
        triangles=tri.astype(np.int32), polygon_start=np.arange(0, 3 * len(tri) + 1, 3, dtype=np.int32),
        polygon_vertices=tri.reshape(-1).astype(np.int32), uvs=np.zeros((0, 2), np.float32),
        polygon_uvs=np.zeros(0, np.int32), landmarks=landmarks.astype(np.int32), regions=regions,
        notice=notice, meta=dict(meta or {}, units="cm", colour_space_of_source=colour_space,
                                 upstream_translation_cm=[float(-x) for x in centre],
                                 origin=f"symmetry plane, eye level, {HEAD_CENTRE_BEHIND_NOSE_CM} cm behind the "
                                        "nose tip"))
    model.validate()
    return model


def _crop(keep: np.ndarray, arrays: dict, tri: np.ndarray, landmarks: np.ndarray, source: str):
    """Keep only vertices `keep` (ids), re-index triangles (dropping those that lose a corner) and landmarks."""
    n = max(int(tri.max()) + 1 if tri.size else 0, int(keep.max()) + 1)
    new = np.full(n, -1, dtype=np.int64)
    new[keep] = np.arange(len(keep))
    t = new[tri]
    t = t[(t >= 0).all(1)]
    lm = new[landmarks]
    if np.any(lm < 0):
        raise ModelFormatError(f"{source}: landmarks {landmarks[lm < 0].tolist()} are outside the expression "
                               "model's vertices")
    out = {k: (a[:, keep] if a.ndim == 3 else a[keep]) for k, a in arrays.items()}
    return out, t, lm


# ---- Exp_Pca.bin ---------------------------------------------------------------------------------------

def read_exp_pca(path: str | os.PathLike, std_path: str | os.PathLike | None = None,
                 num_vertices: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (expMU (n, 3), expPC (K, n, 3) unscaled, std (K,) or ones). n follows from the file size."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read ({e})") from e
    if len(raw) < 4:
        raise ModelFormatError(f"{path}: truncated Exp_Pca.bin (no header)")
    k = int(np.frombuffer(raw[:4], dtype="<i4")[0])
    floats = (len(raw) - 4) // 4
    if k <= 0 or k > 10000:
        raise ModelFormatError(f"{path}: not an Exp_Pca.bin file (header says {k} components)")
    if (len(raw) - 4) % 4:
        raise ModelFormatError(f"{path}: truncated or damaged Exp_Pca.bin ({len(raw)} bytes is not whole floats)")
    if num_vertices is not None:
        n = num_vertices
        if floats < 3 * n * (k + 1):
            raise ModelFormatError(f"{path}: truncated Exp_Pca.bin: {floats} floats, {k} components on {n} vertices "
                                   f"need {3 * n * (k + 1)}")
    else:
        if floats % (3 * (k + 1)):
            raise ModelFormatError(f"{path}: truncated or damaged Exp_Pca.bin: {floats} floats is not 3 * n * "
                                   f"({k} + 1) for any vertex count n")
        n = floats // (3 * (k + 1))
    data = np.frombuffer(raw, dtype="<f4", count=3 * n * (k + 1), offset=4).astype(np.float64)
    mu = data[:3 * n].reshape(n, 3)
    pc = data[3 * n:].reshape(k, n, 3)
    if std_path is None:
        std = np.ones(k)
    else:
        try:
            std = np.loadtxt(std_path, dtype=np.float64).reshape(-1)
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"{std_path}: not a std_exp.txt file ({e})") from e
        if std.size != k:
            raise ModelFormatError(f"{std_path}: {std.size} standard deviations, Exp_Pca.bin has {k} components")
    return mu, pc, std


# ---- BFM 2009 ------------------------------------------------------------------------------------------------

def import_bfm2009(mat_path: str | os.PathLike, *, landmarks: np.ndarray | str | os.PathLike,
                   exp_pca: str | os.PathLike | None = None, std_exp: str | os.PathLike | None = None,
                   exp_index: str | os.PathLike | None = None, num_identity: int | None = None,
                   num_albedo: int | None = None, num_expression: int | None = None,
                   name: str = "bfm2009", colour_space: str = "srgb", one_based_landmarks: bool = False
                   ) -> MorphableModel:
    """01_MorphableModel.mat (+ optional Exp_Pca.bin, std_exp.txt, BFM_exp_idx.mat) -> MorphableModel.

    `landmarks`: 68 vertex ids (0-based, in the numbering of 01_MorphableModel.mat) or a landmark file; BFM
    2009 ships no 68-point landmarks.
    """
    path = Path(mat_path)
    d = _loadmat(path, ["shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl"])
    mu = _vec(d["shapeMU"], None, "shapeMU", path)
    n3 = mu.size
    ev = np.asarray(d["shapeEV"], np.float64).reshape(-1)
    pc = _basis(d["shapePC"], n3, "shapePC", path)
    if ev.size != len(pc):
        raise ModelFormatError(f"{path}: shapeEV has {ev.size} values, shapePC {len(pc)} components")
    tmu = _vec(d["texMU"], n3, "texMU", path)
    tpc = _basis(d["texPC"], n3, "texPC", path)
    tev = np.asarray(d["texEV"], np.float64).reshape(-1)
    if tev.size != len(tpc):
        raise ModelFormatError(f"{path}: texEV has {tev.size} values, texPC {len(tpc)} components")
    tri = np.asarray(d["tl"], dtype=np.int64)
    if tri.ndim != 2 or 3 not in tri.shape:
        raise ModelFormatError(f"{path}: tl has shape {tri.shape}, expected (T, 3)")
    tri = (tri if tri.shape[1] == 3 else tri.T) - 1  # MATLAB 1-based
    if not isinstance(landmarks, np.ndarray):
        landmarks = load_landmark_file(landmarks, one_based=one_based_landmarks)
    elif one_based_landmarks:
        landmarks = landmarks - 1
    landmarks = np.asarray(landmarks, np.int64)
    k_id = len(pc) if num_identity is None else min(num_identity, len(pc))
    k_alb = len(tpc) if num_albedo is None else min(num_albedo, len(tpc))
    arrays = {"mean": mu.reshape(-1, 3), "identity": pc[:k_id] * ev[:k_id, None, None],
                  "albedo_mean": tmu.reshape(-1, 3), "albedo_basis": tpc[:k_alb] * tev[:k_alb, None, None]}
    meta = {"source": f"BFM 2009 {path.name}", "shape_ev": "standard deviations (basis = PC * EV)"}
    n = n3 // 3
    if exp_pca is not None:
        if std_exp is None:
            raise ModelFormatError(f"{exp_pca}: std_exp.txt is needed with Exp_Pca.bin (the components are unit "
                                   "vectors; their standard deviations are in std_exp.txt)")
        _emu, epc, estd = read_exp_pca(exp_pca, std_exp)
        k_exp = len(epc) if num_expression is None else min(num_expression, len(epc))
        expression = epc[:k_exp] * estd[:k_exp, None, None]
        if epc.shape[1] != n:
            if exp_index is None:
                raise ModelFormatError(f"{exp_pca}: the expression basis covers {epc.shape[1]} vertices, the BFM "
                                       f"{n}; give the vertex map BFM_exp_idx.mat (trimIndex) to crop the model")
            trim = np.asarray(_loadmat(Path(exp_index), ["trimIndex"])["trimIndex"], np.int64).reshape(-1) - 1
            if trim.size != epc.shape[1] or trim.min() < 0 or trim.max() >= n:
                raise ModelFormatError(f"{exp_index}: trimIndex has {trim.size} ids in [1, {n}], the expression "
                                       f"basis has {epc.shape[1]} vertices")
            arrays, tri, landmarks = _crop(trim, arrays, tri, landmarks, str(exp_index))
            meta["cropped_to"] = f"{len(trim)} vertices of the expression model (BFM_exp_idx.mat trimIndex)"
        arrays["expression"] = expression
        meta["expression"] = f"Exp_Pca.bin ({len(epc)} components, first {k_exp} kept) * std_exp.txt; expMU unused"
    else:
        arrays["expression"] = np.zeros((0,) + arrays["mean"].shape)
    return build_pca_model(name, **arrays, triangles=tri, landmarks=landmarks, unit_cm=UNITS_CM["um"],
                           colour_scale=255.0, colour_space=colour_space, meta=meta, source=str(path))


# ---- Deep3DFaceRecon BFM_model_front.mat ---------------------------------------------------------------

def import_deep3d(mat_path: str | os.PathLike, *, landmarks: np.ndarray | str | os.PathLike | None = None,
                  name: str = "bfm-deep3d", colour_space: str = "srgb") -> MorphableModel:
    """Deep3DFaceRecon's BFM_model_front.mat (35709 vertices, 80 identity, 64 expression, 80 albedo)."""
    path = Path(mat_path)
    d = _loadmat(path, ["meanshape", "idBase", "exBase", "meantex", "texBase", "tri"], optional=["keypoints"])
    mu = _vec(d["meanshape"], None, "meanshape", path)
    n3 = mu.size
    tri = np.asarray(d["tri"], dtype=np.int64)
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ModelFormatError(f"{path}: tri has shape {tri.shape}, expected (T, 3)")
    if landmarks is None:
        if "keypoints" not in d:
            raise ModelFormatError(f"{path}: missing fields ['keypoints'] (68 landmark ids); pass a landmark file")
        landmarks = np.asarray(d["keypoints"], np.int64).reshape(-1) - 1
    elif not isinstance(landmarks, np.ndarray):
        landmarks = load_landmark_file(landmarks)
    return build_pca_model(
        name, mean=mu.reshape(-1, 3), identity=_basis(d["idBase"], n3, "idBase", path),
        expression=_basis(d["exBase"], n3, "exBase", path),
        albedo_mean=_vec(d["meantex"], n3, "meantex", path).reshape(-1, 3),
        albedo_basis=_basis(d["texBase"], n3, "texBase", path), triangles=tri - 1, landmarks=landmarks,
        unit_cm=UNITS_CM["dm"], colour_scale=255.0, colour_space=colour_space,
        meta={"source": f"Deep3DFaceRecon {path.name}"}, source=str(path))


# ---- BFM 2017 ------------------------------------------------------------------------------------------------

def _h5_pca(f, group: str, path: Path, n3: int | None):
    need = [f"{group}/model/mean", f"{group}/model/pcaBasis", f"{group}/model/pcaVariance"]
    missing = [k for k in need if k not in f]
    if missing:
        raise ModelFormatError(f"{path}: missing datasets {missing}")
    try:
        mean = np.asarray(f[need[0]], np.float64).reshape(-1)
        basis = np.asarray(f[need[1]], np.float64)
        var = np.asarray(f[need[2]], np.float64).reshape(-1)
    except Exception as e:  # truncated HDF5 data
        raise ModelFormatError(f"{path}: cannot read {group} ({type(e).__name__}: {e}); truncated file?") from e
    if n3 is not None and mean.size != n3:
        raise ModelFormatError(f"{path}: {group}/model/mean has {mean.size} values, expected {n3}")
    if basis.ndim != 2 or basis.shape[0] != mean.size or basis.shape[1] != var.size:
        raise ModelFormatError(f"{path}: {group}/model/pcaBasis has shape {basis.shape}, expected "
                               f"({mean.size}, {var.size})")
    if np.any(var < 0):
        raise ModelFormatError(f"{path}: {group}/model/pcaVariance has negative values")
    norms = np.linalg.norm(basis, axis=0)
    std = np.sqrt(var)
    if np.allclose(norms, 1.0, rtol=1e-2, atol=1e-3):
        scaled = basis * std[None]
        how = "orthonormal pcaBasis * sqrt(pcaVariance)"
    elif np.allclose(norms, std, rtol=1e-2):
        scaled = basis
        how = "pcaBasis already scaled by sqrt(pcaVariance)"
    else:
        raise ModelFormatError(f"{path}: {group}/model/pcaBasis columns are neither unit vectors nor scaled by "
                               "sqrt(pcaVariance)")
    return mean, scaled.T.reshape(var.size, -1, 3), how


def import_bfm2017(h5_path: str | os.PathLike, *, landmarks: np.ndarray | str | os.PathLike,
                   name: str = "bfm2017", num_identity: int | None = None, num_albedo: int | None = None,
                   num_expression: int | None = None, colour_space: str = "srgb",
                   one_based_landmarks: bool = False) -> MorphableModel:
    """model2017-1_bfm_nomouth.h5 / model2017-1_face12_nomouth.h5 (statismo HDF5) -> MorphableModel."""
    import h5py

    path = Path(h5_path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise ModelFormatError(f"{path}: not a readable HDF5 file, truncated or damaged ({e})") from e
    with f:
        mean, identity, how = _h5_pca(f, "shape", path, None)
        n3 = mean.size
        amean, albedo, _ = _h5_pca(f, "color", path, n3)
        if "expression" in f:
            emean, expression, _ = _h5_pca(f, "expression", path, n3)
        else:
            emean, expression = np.zeros(n3), np.zeros((0, n3 // 3, 3))
        if "shape/representer/cells" not in f:
            raise ModelFormatError(f"{path}: missing datasets ['shape/representer/cells'] (the triangles)")
        cells = np.asarray(f["shape/representer/cells"], dtype=np.int64)
    tri = cells.T if cells.shape[0] == 3 and cells.ndim == 2 else cells
    if not isinstance(landmarks, np.ndarray):
        landmarks = load_landmark_file(landmarks, one_based=one_based_landmarks)
    elif one_based_landmarks:
        landmarks = landmarks - 1
    k_id = len(identity) if num_identity is None else min(num_identity, len(identity))
    k_alb = len(albedo) if num_albedo is None else min(num_albedo, len(albedo))
    k_exp = len(expression) if num_expression is None else min(num_expression, len(expression))
    return build_pca_model(
        name, mean=(mean + emean).reshape(-1, 3), identity=identity[:k_id], expression=expression[:k_exp],
        albedo_mean=amean.reshape(-1, 3), albedo_basis=albedo[:k_alb], triangles=tri, landmarks=landmarks,
        unit_cm=UNITS_CM["mm"], colour_scale=1.0, colour_space=colour_space,
        meta={"source": f"BFM 2017 {path.name}", "basis": how, "expression_mean": "added to the neutral shape"},
        source=str(path))
