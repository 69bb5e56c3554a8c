"""Landmark detectors of the corpus writer: exact, fan and dlib (optional packages, faked here), none, registered
ones, and what `--landmarks auto` resolves to. The real MediaPipe detector: tests/test_corpus_mediapipe.py."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from test_corpus import all_arrays, build
from test_corpus_standin import TinyGenerator

from stylerig_engine.corpus import CorpusConfigError, make_detector, register_detector
from stylerig_engine.corpus.landmarks import FanLandmarks


def test_fan_without_the_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # import fails as if not installed
    with pytest.raises(CorpusConfigError, match=r"pip install 'stylerig\[landmarks-fan\]'"):
        make_detector("fan", TinyGenerator(), "cpu")
    with pytest.raises(CorpusConfigError, match="face-alignment"):
        build(tmp_path, landmarks="fan")
    assert not (tmp_path / "manifest.json").exists()  # refused before writing anything


def fake_face_alignment(calls: list) -> types.ModuleType:
    """A stand-in for the face-alignment package: 2 faces in image 0, none in image 1, one elsewhere."""
    mod = types.ModuleType("face_alignment")
    mod.LandmarksType = types.SimpleNamespace(TWO_D="2D")

    class FaceAlignment:
        def __init__(self, kind, device="cpu", flip_input=False):
            calls.append(("init", kind, device))

        def get_landmarks_from_batch(self, batch):
            calls.append(("batch", tuple(batch.shape), float(batch.min()), float(batch.max())))
            out = []
            for n in range(batch.shape[0]):
                big = np.stack([np.linspace(2, 29, 68), np.linspace(3, 28, 68)], -1) + n * 0.01
                small = big * 0.1
                out.append(None if n == 1 else np.concatenate([small, big]) if n == 0 else big)
            return out

    mod.FaceAlignment = FaceAlignment
    return mod


def test_fan_adapter_picks_the_largest_face_and_marks_misses(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "face_alignment", fake_face_alignment(calls))
    build(tmp_path, landmarks="fan", count=3, batch=3, size=16)
    assert calls[0] == ("init", "2D", "cpu")
    assert calls[1][:2] == ("batch", (3, 3, 32, 32)) and calls[1][2] >= 0 and calls[1][3] <= 255
    lm = all_arrays(tmp_path)["landmarks"]
    big = np.stack([np.linspace(2, 29, 68), np.linspace(3, 28, 68)], -1)
    np.testing.assert_allclose(lm[0], (big + 0.5) * 0.5 - 0.5, atol=1e-5)  # the larger face, at 16 px
    assert np.isnan(lm[1]).all()
    np.testing.assert_allclose(lm[2], (big + 0.02 + 0.5) * 0.5 - 0.5, atol=1e-5)


def test_fan_pick_handles_list_results():
    a = np.zeros((68, 2))
    b = np.stack([np.arange(68.0), np.arange(68.0)], -1)
    assert np.array_equal(FanLandmarks._pick([a, b]), b.astype(np.float32))
    assert np.isnan(FanLandmarks._pick([])).all() and np.isnan(FanLandmarks._pick(None)).all()


def test_registered_detector(tmp_path, monkeypatch):
    from stylerig_engine.corpus import landmarks

    monkeypatch.setattr(landmarks, "_DETECTORS", dict(landmarks._DETECTORS))  # leave the registry as it was

    class Corner:
        name = "corner"

        def __call__(self, ws, images):
            return torch.zeros(ws.shape[0], 68, 2)

    register_detector("corner", lambda generator, device: Corner())
    build(tmp_path, landmarks="corner", count=2, size=16)
    np.testing.assert_allclose(all_arrays(tmp_path)["landmarks"], -0.25)  # pixel (0, 0) centre at 16 px
    with pytest.raises(CorpusConfigError, match="unknown landmark detector"):
        make_detector("nope", TinyGenerator(), "cpu")


# ------------------------------------------------------------------------------------------------ dlib (opt-in)


def fake_dlib(calls: list) -> types.ModuleType:
    """A stand-in for dlib: one face (two candidate boxes) in image 0, none in image 1."""
    mod = types.ModuleType("dlib")

    class Rect:
        def __init__(self, w):
            self.w = w

        def width(self):
            return self.w

        def height(self):
            return self.w

    def get_frontal_face_detector():
        def detect(image, upsample):
            calls.append(("detect", image.shape, image.dtype.name, upsample))
            return [Rect(3), Rect(9)] if image[0, 0, 0] > 100 else []
        return detect

    class Shape:
        def __init__(self, rect):
            self.rect = rect

        def part(self, k):
            return types.SimpleNamespace(x=k % 30, y=self.rect.w)

    def shape_predictor(path):
        calls.append(("predictor", path))
        return lambda image, rect: Shape(rect)

    mod.get_frontal_face_detector, mod.shape_predictor = get_frontal_face_detector, shape_predictor
    return mod


def test_dlib_is_opt_in_with_its_caveat(tmp_path, monkeypatch):
    from stylerig_engine.corpus.landmarks import DLIB_PREDICTOR_ENV

    monkeypatch.delenv(DLIB_PREDICTOR_ENV, raising=False)
    with pytest.raises(CorpusConfigError, match=f"non-commercial.*{DLIB_PREDICTOR_ENV}=PATH"):
        make_detector("dlib", TinyGenerator(), "cpu")
    monkeypatch.setenv(DLIB_PREDICTOR_ENV, str(tmp_path / "nope.dat"))
    with pytest.raises(CorpusConfigError, match="no such file"):
        make_detector("dlib", TinyGenerator(), "cpu")
    (tmp_path / "p.dat").write_bytes(b"x")
    monkeypatch.setenv(DLIB_PREDICTOR_ENV, str(tmp_path / "p.dat"))
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(CorpusConfigError, match="pip install dlib"):
        make_detector("dlib", TinyGenerator(), "cpu")


def test_dlib_adapter_takes_the_largest_face_and_counts_misses(tmp_path, monkeypatch):
    from stylerig_engine.corpus.landmarks import DLIB_PREDICTOR_ENV

    calls = []
    (tmp_path / "p.dat").write_bytes(b"x")
    monkeypatch.setenv(DLIB_PREDICTOR_ENV, str(tmp_path / "p.dat"))
    monkeypatch.setitem(sys.modules, "dlib", fake_dlib(calls))
    det = make_detector("dlib", TinyGenerator(), "cpu")
    images = torch.stack([torch.ones(3, 8, 8), -torch.ones(3, 8, 8)])  # white: a face; black: none
    lm = det(torch.zeros(2, 6, 8), images).numpy()
    assert calls[0] == ("predictor", str(tmp_path / "p.dat"))
    assert calls[1] == ("detect", (8, 8, 3), "uint8", 1)
    np.testing.assert_array_equal(lm[0, :, 0], np.arange(68) % 30)
    np.testing.assert_array_equal(lm[0, :, 1], 9)  # the larger box
    assert np.isnan(lm[1]).all()
    assert det.summary() == "dlib landmarks: no face in 1 of 2 images"


# ------------------------------------------------------------------------------------------------ --landmarks auto


def hide_mediapipe(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import fails as if not installed


def test_auto_is_exact_for_a_generator_with_landmarks():
    from stylerig_engine.corpus import resolve_landmarks

    assert resolve_landmarks("auto", TinyGenerator()) == "exact"
    assert resolve_landmarks("fan", TinyGenerator()) == "fan"  # named detectors pass through


def test_auto_without_an_offline_detector_stops_and_names_the_extra(tmp_path, monkeypatch, capsys):
    from test_corpus_standin import TinyNoLandmarks

    from stylerig_engine import cli
    from stylerig_engine.corpus import resolve_landmarks

    hide_mediapipe(monkeypatch)
    with pytest.raises(CorpusConfigError, match=r"no offline landmark detector is installed.*stylerig\[landmarks\]"):
        resolve_landmarks("auto", TinyNoLandmarks())
    with pytest.raises(CorpusConfigError, match=r"--landmarks mediapipe needs MediaPipe.*stylerig\[landmarks\]"):
        make_detector("mediapipe", TinyNoLandmarks(), "cpu")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "c"
    rc = cli.main(["corpus", "--generator", "py:test_corpus_standin:tiny_no_landmarks", "--count", "2", "--size", "16",
                   "--out", str(out), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "stylerig corpus: error: --landmarks auto" in err and "stylerig[landmarks]" in err
    assert not (out / "manifest.json").exists()  # refused before writing anything


def test_mediapipe_without_the_face_mesh_solution_names_the_pinned_range(monkeypatch):
    pytest.importorskip("mediapipe")
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)  # as in MediaPipe 0.10.30+
    monkeypatch.delitem(sys.modules, "mediapipe.python.solutions.face_mesh", raising=False)
    with pytest.raises(CorpusConfigError, match="0.10.30 and later dropped it.*0.10.14-0.10.21"):
        make_detector("mediapipe", TinyGenerator(), "cpu")


def test_detect_landmarks_synthesises_images_only_for_a_detector_that_reads_them(monkeypatch):
    """detect_landmarks: the exact detector reads the latents (no image is made); an image detector gets the
    generator's images `batch` at a time; both are scaled to the corpus size like the corpus writer's."""
    from stylerig_engine.corpus import detect_landmarks
    from stylerig_engine.corpus.writer import scale_landmarks
    from stylerig_engine.synthetic import make_synthetic

    G = make_synthetic("synthetic:32")
    ws = G.mapping(torch.randn(5, G.z_dim), psi=0.8)
    exact = make_detector("exact", G, "cpu")
    expected = scale_landmarks(G.landmarks(ws), 32, 16)
    synthesis = G.synthesis
    monkeypatch.setattr(G, "synthesis", lambda *a, **k: pytest.fail("synthesised images for the exact detector"))
    assert torch.allclose(detect_landmarks(G, ws, size=16, detector=exact, batch=2), expected)
    monkeypatch.setattr(G, "synthesis", synthesis)
    seen = []

    def from_images(part, images):
        seen.append(tuple(images.shape))
        return G.landmarks(part)

    assert torch.allclose(detect_landmarks(G, ws, size=16, detector=from_images, batch=2), expected)
    assert seen == [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]
