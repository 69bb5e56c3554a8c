"""The offline MediaPipe detector (`--landmarks mediapipe`) and its 478 -> 68 table, on real images.

MediaPipe is part of the dev extra (through `stylerig[landmarks]`), so these run in CI. Real faces: scikit-image's
`astronaut` photograph (inside its wheel) and renders of the synthetic world, whose exact landmarks are known.
Accuracy and speed figures are benchmarks/landmarks.py's job; the bounds here only catch a broken table,
convention or scale.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_corpus import all_arrays, build
from test_corpus_standin import TinyGenerator

from stylerig_engine.corpus import make_detector, resolve_generator, resolve_landmarks
from stylerig_engine.corpus.mediapipe68 import MIRROR_PAIRS, TABLE, correspondence_matrix, mesh_to_ibug68

pytest.importorskip("mediapipe")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def detector():
    return make_detector("mediapipe", None, "cpu")


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    """(1, 3, 512, 512) in [-1, 1]: a real photograph of a face."""
    return torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1


def mirror_index() -> np.ndarray:
    m = np.arange(68)
    for a, b in MIRROR_PAIRS:
        m[a], m[b] = b, a
    return m


def test_table_is_complete_ordered_and_symmetric():
    assert [row[0] for row in TABLE] == list(range(68))
    assert all(1 <= len(v) <= 2 and all(0 <= i < 468 for i in v) for _, v, _ in TABLE)  # no iris points
    pairs = {p for pair in MIRROR_PAIRS for p in pair}
    midline = set(range(68)) - pairs
    assert midline == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}
    m = correspondence_matrix()
    np.testing.assert_allclose(m.sum(1), 1.0)
    pts = np.random.default_rng(0).normal(size=(478, 2))
    np.testing.assert_allclose(mesh_to_ibug68(pts), m @ pts, atol=1e-6)


def test_astronaut_points_follow_the_ibug_layout(detector, astronaut):
    lm = detector(torch.zeros(1, 1, 1), astronaut)[0].numpy()
    assert np.isfinite(lm).all()
    x, y = lm[:, 0], lm[:, 1]
    iod = np.linalg.norm(lm[36] - lm[45])
    assert 40 < iod < 90  # her eyes are ~60 px apart in the 512² photograph
    # Left to right in the image (the subject's right first): eye corners, mouth corners, nose base, jaw ends.
    assert x[36] < x[39] < x[42] < x[45] and x[48] < x[51] < x[54] and x[31] < x[33] < x[35] and x[0] < x[8] < x[16]
    # Top to bottom: brows, eyes, nose bridge to tip, nose base, upper lip, mouth opening, lower lip, chin.
    assert y[19] < y[37] < y[41] < y[30] < y[33] < y[51] < y[62] <= y[66] < y[57] < y[8]
    assert y[27] < y[28] < y[29] < y[30]
    # Upper lids above lower lids, inner lips inside the outer ones, brows above their eyes.
    assert y[37] < y[41] and y[38] < y[40] and y[43] < y[47] and y[44] < y[46]
    assert y[51] < y[62] and y[66] < y[57] and y[19] < y[37] and y[24] < y[44]
    # The jaw outline surrounds the inner points.
    assert x[:17].min() < x[17:].min() and x[:17].max() > x[17:].max() and y[8] > y[17:].max()


def test_mirrored_photograph_gives_mirrored_points(detector, astronaut):
    """The table's mirror pairs use mirrored mesh vertices: flipping the image swaps them."""
    lm = detector(torch.zeros(1, 1, 1), astronaut)[0].numpy()
    flipped = detector(torch.zeros(1, 1, 1), astronaut.flip(-1))[0].numpy()
    back = flipped[mirror_index()].copy()
    back[:, 0] = 511 - back[:, 0]  # pixel-centre convention: x -> W - 1 - x
    err = np.linalg.norm(back - lm, axis=1)
    assert np.median(err[17:]) < 1.5 and err.max() < 6, err.round(1)


def test_large_images_are_reduced_and_the_points_scaled_back(detector, astronaut):
    big = torch.nn.functional.interpolate(astronaut, size=(1024, 1024), mode="bilinear", align_corners=False)
    lm = detector(torch.zeros(1, 1, 1), astronaut)[0].numpy()
    lm_big = detector(torch.zeros(1, 1, 1), big)[0].numpy()  # reduced to 512 inside, then scaled to 1024
    np.testing.assert_allclose(lm_big, (lm + 0.5) * 2 - 0.5, atol=2.5)


def test_synthetic_faces_against_exact_landmarks(detector):
    """Renders of the default face (synthetic world, 256²) with their exact landmarks."""
    gen = resolve_generator("synthetic:256")
    z = torch.from_numpy(np.random.RandomState(3).randn(4, gen.z_dim)).float()
    ws = gen.mapping(z, psi=0.6)
    with torch.no_grad():
        images, exact = gen.synthesis(ws), gen.landmarks(ws).numpy()
    found = detector(ws, images).numpy()
    assert np.isfinite(found).all()
    err = np.linalg.norm(found - exact, axis=2)
    iod = np.linalg.norm(exact[:, 36] - exact[:, 45], axis=1)[:, None]
    assert np.median(err[:, 17:] / iod) < 0.05  # about 2 px of an 80 px inter-ocular distance (benchmark)
    assert np.median(err[:, :17] / iod) < 0.12  # the jaw: contour vs the model's fixed vertices


def test_noise_images_are_counted_not_fatal(tmp_path):
    """A corpus of noise images (no face anywhere): every sample NaN, counted, the corpus written."""
    report = build(tmp_path, gen=TinyGenerator(), landmarks="mediapipe", count=5, size=16)
    lm = all_arrays(tmp_path)["landmarks"]
    assert lm.shape == (5, 68, 2) and np.isnan(lm).all()
    assert report.no_face == 5 and report.samples_written == 5


def test_auto_picks_mediapipe_for_a_generator_without_landmarks():
    from test_corpus_standin import TinyNoLandmarks

    assert resolve_landmarks("auto", TinyNoLandmarks()) == "mediapipe"


def test_preflight_detector_stands_in_the_template_only_where_no_face_is_found(astronaut):
    det = make_detector("preflight", None, "cpu")
    noise = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lm = det(torch.zeros(2, 1, 1), torch.cat([astronaut, noise])).numpy()
    real = make_detector("mediapipe", None, "cpu")(torch.zeros(1, 1, 1), astronaut)[0].numpy()
    np.testing.assert_allclose(lm[0], real, atol=1e-4)  # a found face is kept as found
    np.testing.assert_allclose(lm[1], det.template(512).numpy(), atol=1e-5)  # the stand-in
    assert lm[1, 36, 0] < lm[1, 45, 0] and lm[1, 27, 1] < lm[1, 8, 1]  # a face's layout, in the image
    assert det.summary().startswith("preflight landmarks: MediaPipe found no face in 1 of 2 images")


def test_cli_auto_uses_mediapipe_and_reports_faceless_samples(tmp_path, monkeypatch, capsys):
    import json
    from pathlib import Path

    from stylerig_engine import cli

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "c"
    assert cli.main(["corpus", "--generator", "py:test_corpus_standin:tiny_no_landmarks", "--count", "3", "--size",
                     "16", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert json.loads((out / "manifest.json").read_text())["config"]["landmarks"] == "mediapipe"
    assert "landmarks mediapipe, no face in 3" in captured.out
    assert "mediapipe landmarks: no face in 3 of 3 images" in captured.err
