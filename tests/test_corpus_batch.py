"""Batched corpus reading (Corpus.batch) and leaving out samples without a face (faces_only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_corpus import build
from test_corpus_standin import TinyGenerator

from stylerig_engine.corpus import Corpus, batch_indices, epoch_order, register_detector


def test_batch_equals_stacked_samples(tmp_path):
    build(tmp_path, count=11, size=16, shard_size=4)
    corpus = Corpus(tmp_path)
    idx = np.array([9, 0, 4, 10, 3, 3, 7])  # across shards, out of order, a repeat
    got = corpus.batch(idx)
    samples = [corpus.sample(int(i)) for i in idx]
    for k, field in enumerate(("ws", "image", "landmarks", "index")):
        want = torch.stack([s[k] for s in samples])
        assert got[k].dtype == want.dtype and torch.equal(got[k], want), field
    u8 = corpus.batch(idx, image_format="uint8").image
    assert u8.dtype == torch.uint8 and torch.equal(u8, torch.stack([corpus.sample(int(i), "uint8").image for i in idx]))
    with pytest.raises(IndexError, match="sample 11 out of range"):
        corpus.batch([1, 11])
    assert corpus.batch([]).ws.shape == (0, TinyGenerator.num_ws, TinyGenerator.w_dim)


class SometimesFaceless:
    """Exact landmarks, except NaN (no face) for samples whose first W+ coordinate is negative."""

    name = "sometimes"

    def __init__(self, generator, device):
        self.generator = generator

    def __call__(self, ws, images):
        lm = self.generator.landmarks(ws).clone()
        lm[ws[:, 0, 0] < 0] = float("nan")
        return lm


def test_faces_only_leaves_out_samples_without_a_face(tmp_path, monkeypatch):
    from stylerig_engine.corpus import landmarks

    monkeypatch.setattr(landmarks, "_DETECTORS", dict(landmarks._DETECTORS))
    register_detector("sometimes", SometimesFaceless)
    report = build(tmp_path, landmarks="sometimes", count=40, size=16, shard_size=8)
    corpus = Corpus(tmp_path)
    found = corpus.face_found()
    assert 0 < report.no_face == int((~found).sum()) < 40
    for i in range(40):
        assert found[i] == bool(torch.isfinite(corpus.sample(i).landmarks).all())
    full = epoch_order(corpus, 5, 2)
    kept = epoch_order(corpus, 5, 2, faces_only=True)
    np.testing.assert_array_equal(kept, full[found[full]])  # same order, the faceless left out
    batch = 4
    per_epoch = int(found.sum()) // batch
    seen = np.concatenate([batch_indices(corpus, 5, s, batch) for s in range(per_epoch)])
    assert found[seen].all() and len(set(seen.tolist())) == per_epoch * batch
    np.testing.assert_array_equal(batch_indices(corpus, 5, per_epoch, batch),
                                  epoch_order(corpus, 5, 1, faces_only=True)[:batch])
    assert torch.isfinite(corpus.batch(seen).landmarks).all()


def test_all_faces_found_gives_the_plain_order(tmp_path):
    build(tmp_path, count=12, size=16, shard_size=4)
    corpus = Corpus(tmp_path)
    assert corpus.face_found().all()
    for step in range(7):  # = rig/train.py's batch order (consecutive slices of epoch_order)
        per_epoch = 12 // 5
        e, k = divmod(step, per_epoch)
        np.testing.assert_array_equal(batch_indices(corpus, 1, step, 5), epoch_order(corpus, 1, e)[k * 5:(k + 1) * 5])


def test_batches_need_landmarks(tmp_path):
    build(tmp_path, count=6, size=16, landmarks="none")
    corpus = Corpus(tmp_path)
    with pytest.raises(ValueError, match="no landmarks; build it with --landmarks auto"):
        batch_indices(corpus, 0, 0, 2)
    assert batch_indices(corpus, 0, 0, 2, faces_only=False).shape == (2,)
    assert torch.isnan(corpus.batch([0, 1]).landmarks).all()
