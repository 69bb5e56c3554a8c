"""Importers of user-supplied Basel Face Models, on small synthetic files written in the published formats."""

from __future__ import annotations

import json
import struct

import h5py
import numpy as np
import pytest
import scipy.io

from stylerig_engine.cli import main
from stylerig_engine.facemodel import ModelFormatError, load_model
from stylerig_engine.facemodel.albedo import srgb_to_linear
from stylerig_engine.facemodel.bfm import (
    HEAD_CENTRE_BEHIND_NOSE_CM,
    import_bfm2009,
    import_bfm2017,
    import_deep3d,
    load_landmark_file,
    read_exp_pca,
)


def _ellipse(cx, cy, a, b, angles):
    return [(cx + a * np.cos(t), cy + b * np.sin(t)) for t in angles]


def landmark_template() -> np.ndarray:
    """68 (x, y) positions in cm, iBUG order, subject's right at -X."""
    pts = [(-7 * np.cos(t), 2 - 8 * np.sin(t)) for t in np.linspace(0, np.pi, 17)]  # jaw 0-16
    pts += [(x, 5.3 + 0.3 * np.sin((x + 5.5) / 4.3 * np.pi)) for x in np.linspace(-5.5, -1.2, 5)]  # brow 17-21
    pts += [(x, 5.3 + 0.3 * np.sin((x - 1.2) / 4.3 * np.pi)) for x in np.linspace(1.2, 5.5, 5)]  # brow 22-26
    pts += [(0, y) for y in (3.8, 2.8, 1.8, 0.6)]  # nose bridge 27-30 (30 = tip)
    pts += [(x, -0.8) for x in np.linspace(-1.5, 1.5, 5)]  # nose base 31-35
    up = np.radians([180, 120, 60, 0, -60, -120])  # outer corner, upper lid, inner corner, lower lid
    pts += _ellipse(-3.2, 3.3, 1.3, 0.5, up)  # right eye 36-41: 36 outer (-X), 39 inner
    pts += _ellipse(3.2, 3.3, 1.3, 0.5, np.radians([180, 120, 60, 0, -60, -120]))  # left eye 42-47: 42 inner
    pts += _ellipse(0, -3.5, 2.5, 1.0, np.radians(np.linspace(180, -150, 12)))  # outer lips 48-59
    pts += _ellipse(0, -3.5, 1.8, 0.3, np.radians(np.linspace(180, -135, 8)))  # inner lips 60-67
    return np.asarray(pts)


def synthetic_face(spacing: float = 0.4):
    """(V, 3) cm grid face (an ellipsoid with a nose), (T, 3) CCW-from-front triangles, 68 landmark ids."""
    xs = np.arange(-8, 8.001, spacing)
    ys = np.arange(-11, 8.001, spacing)
    x, y = np.meshgrid(xs, ys)
    z = 8 * np.sqrt(np.clip(1 - (x / 9) ** 2 - (y / 13) ** 2, 0.05, None))
    z += 2.5 * np.exp(-((x / 1.0) ** 2 + ((y - 0.6) / 1.5) ** 2))
    verts = np.stack([x, y, z], -1).reshape(-1, 3)
    nx, ny = len(xs), len(ys)
    a = (np.arange(ny - 1)[:, None] * nx + np.arange(nx - 1)[None]).reshape(-1)
    tri = np.concatenate([np.stack([a, a + 1, a + nx + 1], 1), np.stack([a, a + nx + 1, a + nx], 1)])
    lm2 = landmark_template()
    lm = np.argmin(((verts[None, :, :2] - lm2[:, None]) ** 2).sum(-1), axis=1)
    assert len(set(lm.tolist())) == 68
    return verts, tri, lm


def orthonormal(rng, rows, k):
    q, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    return q


@pytest.fixture(scope="module")
def face():
    verts, tri, lm = synthetic_face()
    rng = np.random.default_rng(0)
    n3 = verts.size
    colour = np.clip(np.array([185.0, 135.0, 112.0]) + 10 * rng.standard_normal(verts.shape), 0, 255)
    return {"verts": verts, "tri": tri, "lm": lm, "id_pc": orthonormal(rng, n3, 4),
            "id_ev": np.array([3e4, 2e4, 1e4, 5e3]), "tex_mu": colour.reshape(-1), "tex_pc": orthonormal(rng, n3, 3),
            "tex_ev": np.array([1500.0, 900.0, 400.0]), "exp_pc": orthonormal(rng, n3, 5),
            "exp_std": np.array([2e4, 1.5e4, 1e4, 5e3, 2e3])}


def write_bfm2009(path, f, drop=()):
    data = {"shapeMU": (f["verts"] * 1e4).reshape(-1, 1).astype(np.float32),  # micrometres
            "shapePC": f["id_pc"].astype(np.float32), "shapeEV": f["id_ev"].reshape(-1, 1).astype(np.float32),
            "texMU": f["tex_mu"].reshape(-1, 1).astype(np.float32), "texPC": f["tex_pc"].astype(np.float32),
            "texEV": f["tex_ev"].reshape(-1, 1).astype(np.float32),
            "tl": (f["tri"][:, [0, 2, 1]] + 1).astype(np.float64)}  # clockwise from the front, 1-based
    for k in drop:
        data.pop(k)
    scipy.io.savemat(path, data)
    return path


def write_exp_pca(path, pc, mu=None):
    """Exp_Pca.bin: int32 K, float32 expMU[3n], float32 expPC component-major."""
    k = pc.shape[1]
    mu = np.zeros(pc.shape[0]) if mu is None else mu
    with open(path, "wb") as fh:
        fh.write(struct.pack("<i", k))
        fh.write(mu.astype("<f4").tobytes())
        fh.write(pc.T.astype("<f4").tobytes())
    return path


def _translation(model):
    return np.asarray(model.meta["upstream_translation_cm"])


def test_bfm2009_units_bases_albedo_and_winding(face, tmp_path):
    path = write_bfm2009(tmp_path / "01_MorphableModel.mat", face)
    model = import_bfm2009(path, landmarks=face["lm"])
    v = len(face["verts"])
    assert model.num_vertices == v and model.num_identity == 4 and model.num_albedo == 3
    assert model.num_expression == 0 and model.expression_prior == "gaussian"
    # micrometres -> cm, translated to the head centre
    np.testing.assert_allclose(model.neutral - _translation(model), face["verts"], atol=1e-4)
    p = model.neutral[model.landmarks]
    assert abs(p[[36, 39, 42, 45], 1].mean()) < 1e-4 and abs(p[27:31, 0].mean()) < 1e-4
    assert p[:, 2].max() == pytest.approx(HEAD_CENTRE_BEHIND_NOSE_CM, abs=1e-4)
    # basis = PC * EV (EV are standard deviations), in cm
    expected = (face["id_pc"] * face["id_ev"]).T.reshape(4, v, 3) * 1e-4
    np.testing.assert_allclose(model.identity_basis, expected, atol=1e-6)
    assert np.linalg.norm(model.identity_basis[0]) == pytest.approx(3.0, rel=1e-4)  # 3e4 um
    # albedo: sRGB 0..255 -> linear [0, 1]; the basis is the slope of that curve at the mean
    mu = face["tex_mu"].reshape(-1, 3)
    np.testing.assert_allclose(model.albedo_mean, srgb_to_linear(mu / 255), atol=1e-5)
    step = 0.05
    d = (face["tex_pc"][:, 0] * face["tex_ev"][0]).reshape(-1, 3)
    slope = (srgb_to_linear((mu + step * d) / 255) - srgb_to_linear((mu - step * d) / 255)) / (2 * step)
    np.testing.assert_allclose(model.albedo_basis[0], slope, rtol=1e-3, atol=1e-6)
    assert np.abs(model.albedo_basis[0]).max() > 1e-3
    # the file's clockwise triangles come out counter-clockwise seen from the front
    np.testing.assert_array_equal(model.triangles, face["tri"])
    assert model.regions["eyes"].any() and model.regions["face_skin"][model.landmarks[30]]
    assert "Basel" in model.notice


def test_bfm2009_with_expressions_and_vertex_map(face, tmp_path):
    mat = write_bfm2009(tmp_path / "01_MorphableModel.mat", face)
    v = len(face["verts"])
    std = tmp_path / "std_exp.txt"
    np.savetxt(std, face["exp_std"])
    # expression model on every vertex
    exp = write_exp_pca(tmp_path / "Exp_Pca.bin", face["exp_pc"], mu=np.full(3 * v, 7.0))
    model = import_bfm2009(mat, landmarks=face["lm"], exp_pca=exp, std_exp=std, num_expression=3)
    assert model.num_expression == 3 and model.expression_names == ["exp000", "exp001", "exp002"]
    expected = (face["exp_pc"][:, :3] * face["exp_std"][:3]).T.reshape(3, v, 3) * 1e-4
    np.testing.assert_allclose(model.expression_basis, expected, atol=1e-6)
    np.testing.assert_allclose(model.neutral - _translation(model), face["verts"], atol=1e-4)  # expMU unused

    # expression model on a subset (like Guo et al.'s 53215 of 53490): needs the map, then the model is cropped
    nx = 41
    keep = np.arange(nx, v)  # drop the bottom grid row
    sub = write_exp_pca(tmp_path / "Exp_sub.bin", face["exp_pc"].reshape(v, 3, 5)[keep].reshape(-1, 5))
    with pytest.raises(ModelFormatError, match="BFM_exp_idx.mat"):
        import_bfm2009(mat, landmarks=face["lm"], exp_pca=sub, std_exp=std)
    idx = tmp_path / "BFM_exp_idx.mat"
    scipy.io.savemat(idx, {"trimIndex": (keep + 1).reshape(-1, 1).astype(np.float64)})
    cropped = import_bfm2009(mat, landmarks=face["lm"], exp_pca=sub, std_exp=std, exp_index=idx)
    assert cropped.num_vertices == len(keep) and cropped.num_expression == 5
    np.testing.assert_allclose(cropped.neutral[cropped.landmarks], model.neutral[face["lm"]], atol=1e-4)
    assert len(cropped.triangles) == len(face["tri"]) - 2 * (nx - 1)
    np.testing.assert_allclose(cropped.identity_basis, model.identity_basis[:, keep], atol=1e-6)


def test_exp_pca_errors(face, tmp_path):
    good = write_exp_pca(tmp_path / "Exp_Pca.bin", face["exp_pc"])
    _mu, pc, std = read_exp_pca(good)
    assert pc.shape == (5, len(face["verts"]), 3) and np.all(std == 1)
    truncated = tmp_path / "trunc.bin"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_exp_pca(truncated)
    with pytest.raises(ModelFormatError, match="truncated"):
        read_exp_pca(good, num_vertices=len(face["verts"]) + 1)
    (tmp_path / "empty.bin").write_bytes(b"\x01")
    with pytest.raises(ModelFormatError, match="no header"):
        read_exp_pca(tmp_path / "empty.bin")
    wrong_std = tmp_path / "std.txt"
    np.savetxt(wrong_std, np.ones(4))
    with pytest.raises(ModelFormatError, match="4 standard deviations"):
        read_exp_pca(good, wrong_std)
    mat = write_bfm2009(tmp_path / "m.mat", face)
    with pytest.raises(ModelFormatError, match="std_exp.txt is needed"):
        import_bfm2009(mat, landmarks=face["lm"], exp_pca=good)


def test_bfm2009_bad_files(face, tmp_path):
    missing = write_bfm2009(tmp_path / "missing.mat", face, drop=("texEV",))
    with pytest.raises(ModelFormatError, match=r"missing fields \['texEV'\]"):
        import_bfm2009(missing, landmarks=face["lm"])
    good = write_bfm2009(tmp_path / "good.mat", face)
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFormatError, match="truncated or damaged"):
        import_bfm2009(truncated, landmarks=face["lm"])
    with pytest.raises(ModelFormatError, match="no such file"):
        import_bfm2009(tmp_path / "nope.mat", landmarks=face["lm"])
    with pytest.raises(ModelFormatError, match="68 vertex ids"):
        import_bfm2009(good, landmarks=np.arange(67))


def write_deep3d(path, f, units=0.1, keypoints=True):
    """BFM_model_front.mat as Deep3DFaceRecon writes it (decimetres, bases pre-scaled, 1-based ids)."""
    v = len(f["verts"])
    data = {"meanshape": (f["verts"] * units).reshape(1, -1), "idBase": f["id_pc"] * f["id_ev"] * 1e-5,
            "exBase": f["exp_pc"] * f["exp_std"] * 1e-5, "meantex": f["tex_mu"].reshape(1, -1),
            "texBase": f["tex_pc"] * f["tex_ev"], "tri": (f["tri"] + 1).astype(np.float64),
            "point_buf": np.ones((v, 8)), "skinmask": np.ones((1, v))}
    if keypoints:
        data["keypoints"] = (f["lm"] + 1).reshape(1, -1).astype(np.float64)
    scipy.io.savemat(path, data)
    return path


def test_deep3d(face, tmp_path):
    path = write_deep3d(tmp_path / "BFM_model_front.mat", face)
    model = import_deep3d(path)
    v = len(face["verts"])
    np.testing.assert_array_equal(model.landmarks, face["lm"])  # keypoints, 1-based in the file
    np.testing.assert_allclose(model.neutral - _translation(model), face["verts"], atol=1e-4)  # dm -> cm
    np.testing.assert_allclose(model.identity_basis, (face["id_pc"] * face["id_ev"]).T.reshape(4, v, 3) * 1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(model.expression_basis,
                               (face["exp_pc"] * face["exp_std"]).T.reshape(5, v, 3) * 1e-4, atol=1e-6)
    assert model.num_albedo == 3 and model.expression_prior == "gaussian"
    np.testing.assert_array_equal(model.triangles, face["tri"])  # already counter-clockwise: unchanged

    no_kp = write_deep3d(tmp_path / "nokp.mat", face, keypoints=False)
    with pytest.raises(ModelFormatError, match="keypoints"):
        import_deep3d(no_kp)
    lm_file = tmp_path / "lm.txt"
    lm_file.write_text(" ".join(map(str, face["lm"])))
    np.testing.assert_array_equal(import_deep3d(no_kp, landmarks=lm_file).landmarks, face["lm"])
    wrong_units = write_deep3d(tmp_path / "um.mat", face, units=1e4)
    with pytest.raises(ModelFormatError, match="Wrong units"):
        import_deep3d(wrong_units)


def write_bfm2017(path, f, *, flip_y=False, scaled=False, drop=None):
    verts = f["verts"] * 10.0  # millimetres
    if flip_y:
        verts = verts * [1, -1, 1]
    with h5py.File(path, "w") as h:
        def pca(group, mean, basis, std):
            h[f"{group}/model/mean"] = mean.astype(np.float32)
            h[f"{group}/model/pcaBasis"] = (basis * std if scaled else basis).astype(np.float32)
            h[f"{group}/model/pcaVariance"] = (std ** 2).astype(np.float32)
            h[f"{group}/representer/cells"] = f["tri"].T.astype(np.uint32)

        pca("shape", verts.reshape(-1), f["id_pc"], f["id_ev"] * 1e-3)  # um -> mm
        if drop != "color":
            pca("color", f["tex_mu"] / 255, f["tex_pc"], f["tex_ev"] / 255)
        pca("expression", np.full(verts.size, 0.5), f["exp_pc"], f["exp_std"] * 1e-3)
    return path


def test_bfm2017(face, tmp_path):
    v = len(face["verts"])
    path = write_bfm2017(tmp_path / "model2017-1_bfm_nomouth.h5", face)
    lm_json = tmp_path / "lm.json"
    lm_json.write_text(json.dumps({"landmarks": face["lm"].tolist()}))
    model = import_bfm2017(path, landmarks=lm_json, num_identity=2)
    assert model.num_identity == 2 and model.num_expression == 5 and model.num_albedo == 3
    # mm -> cm; the expression mean (0.5 mm) is part of the neutral
    np.testing.assert_allclose(model.neutral - _translation(model), face["verts"] + 0.05, atol=1e-4)
    np.testing.assert_allclose(model.identity_basis, (face["id_pc"] * face["id_ev"]).T.reshape(4, v, 3)[:2] * 1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(model.albedo_mean, srgb_to_linear(face["tex_mu"].reshape(-1, 3) / 255), atol=1e-5)
    # a basis stored already scaled by sqrt(variance) gives the same model
    scaled = import_bfm2017(write_bfm2017(tmp_path / "scaled.h5", face, scaled=True), landmarks=face["lm"],
                            num_identity=2)
    np.testing.assert_allclose(scaled.identity_basis, model.identity_basis, atol=1e-6)
    assert "orthonormal" in model.meta["basis"] and "already scaled" in scaled.meta["basis"]


def test_bfm2017_bad_files(face, tmp_path):
    with pytest.raises(ModelFormatError, match=r"color/model/mean"):
        import_bfm2017(write_bfm2017(tmp_path / "nocolor.h5", face, drop="color"), landmarks=face["lm"])
    with pytest.raises(ModelFormatError, match="Y is not up"):
        import_bfm2017(write_bfm2017(tmp_path / "flipped.h5", face, flip_y=True), landmarks=face["lm"])
    good = write_bfm2017(tmp_path / "good.h5", face)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(ModelFormatError, match="truncated"):
        import_bfm2017(truncated, landmarks=face["lm"])


def test_landmark_files(tmp_path):
    ids = np.arange(100, 168)
    (tmp_path / "a.txt").write_text(",".join(map(str, ids + 1)))
    np.testing.assert_array_equal(load_landmark_file(tmp_path / "a.txt", one_based=True), ids)
    np.save(tmp_path / "b.npy", ids)
    np.testing.assert_array_equal(load_landmark_file(tmp_path / "b.npy"), ids)
    (tmp_path / "c.json").write_text(json.dumps(ids.tolist()))
    np.testing.assert_array_equal(load_landmark_file(tmp_path / "c.json"), ids)
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(ModelFormatError, match="3 landmark ids, expected 68"):
        load_landmark_file(tmp_path / "d.txt")
    (tmp_path / "e.txt").write_text("one two")
    with pytest.raises(ModelFormatError, match="not a landmark file"):
        load_landmark_file(tmp_path / "e.txt")


def test_cli_import(face, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STYLERIG_CACHE", str(tmp_path / "cache"))
    deep3d = write_deep3d(tmp_path / "BFM_model_front.mat", face)
    assert main(["assets", "import", "deep3d", str(deep3d), "--out", "mybfm"]) == 0
    assert "imported deep3d as mybfm" in capsys.readouterr().out
    model = load_model("mybfm")
    assert model.num_vertices == len(face["verts"]) and model.num_expression == 5
    assert (tmp_path / "cache" / "models" / "mybfm.NOTICE.txt").read_text().startswith("Basel Face Model")

    mat = write_bfm2009(tmp_path / "01_MorphableModel.mat", face)
    assert main(["assets", "import", "bfm2009", str(mat), "--out", "b9"]) == 1
    assert "--landmarks" in capsys.readouterr().err
    lm = tmp_path / "lm.txt"
    lm.write_text("\n".join(map(str, face["lm"] + 1)))
    assert main(["assets", "import", "bfm2009", str(mat), "--out", "b9", "--landmarks", str(lm), "--one-based",
                 "--identity", "2"]) == 0
    assert load_model("b9").num_identity == 2
    h5 = write_bfm2017(tmp_path / "m.h5", face)
    assert main(["assets", "import", "bfm2017", str(h5), "--out", str(tmp_path / "x.npz"), "--landmarks",
                 str(lm), "--one-based"]) == 0
    assert load_model(tmp_path / "x.npz").num_expression == 5
