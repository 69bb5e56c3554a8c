"""Landmark detectors of the corpus writer: exact, fan (optional package), none, registered ones."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from test_corpus import all_arrays, build
from test_corpus_standin import TinyGenerator

from stylerig_engine.corpus import CorpusConfigError, make_detector, register_detector
from stylerig_engine.corpus.landmarks import FanLandmarks


def test_fan_without_the_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # import fails as if not installed
    with pytest.raises(CorpusConfigError, match=r"pip install 'stylerig\[landmarks\]'"):
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
