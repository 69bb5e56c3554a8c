"""Reading a corpus for training: validation on open, memory maps, per-epoch shuffle, rank/worker splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_corpus import all_arrays, build
from test_corpus_standin import TinyNoLandmarks
from torch.utils.data import DataLoader

from stylerig_engine.corpus import Corpus, CorpusDataset, CorpusIntegrityError, CorpusStream, epoch_order


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    build(out, count=10, shard_size=4, mixing=2)
    return out


def test_samples_are_the_stored_arrays(corpus_dir):
    stored = all_arrays(corpus_dir)
    corpus = Corpus(corpus_dir, verify=True)
    assert len(corpus) == 10 and corpus.has_landmarks and corpus.resolution == 16
    assert isinstance(corpus.shard_arrays(0)["images"], np.memmap)  # read through memory maps
    for i in (0, 3, 4, 9):
        s = corpus.sample(i)
        assert s.ws.dtype == torch.float32 and torch.equal(s.ws, torch.from_numpy(stored["ws"][i]))
        assert s.image.shape == (3, 16, 16) and s.image.dtype == torch.float32
        u = torch.from_numpy(stored["images"][i]).permute(2, 0, 1)
        assert torch.equal(s.image, u.float() / 127.5 - 1) and s.image.min() >= -1 and s.image.max() <= 1
        assert torch.equal(corpus.sample(i, "uint8").image, u)
        assert torch.equal(s.landmarks, torch.from_numpy(stored["landmarks"][i])) and int(s.index) == i
    with pytest.raises(IndexError):
        corpus.sample(10)


def test_dataset_collates_with_a_dataloader(corpus_dir):
    ds = CorpusDataset(corpus_dir, cache_shards=1)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch.ws.shape == (4, 6, 8) and batch.image.shape == (4, 3, 16, 16)
    assert batch.landmarks.shape == (4, 68, 2) and batch.index.tolist() == [0, 1, 2, 3]
    for i in range(10):
        ds[i]
    assert len(ds.corpus._cache) == 1  # LRU of open shards


def test_epoch_order_is_deterministic_shard_local_and_complete(corpus_dir):
    corpus = Corpus(corpus_dir)
    a, b, c = epoch_order(corpus, 0, 0), epoch_order(corpus, 0, 0), epoch_order(corpus, 0, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a, epoch_order(corpus, 1, 0))
    assert sorted(a.tolist()) == list(range(10)) and not np.array_equal(a, np.arange(10))
    shard = np.searchsorted([4, 8], a, side="right")  # which shard each position reads
    assert (np.diff(shard) != 0).sum() == 2  # one shard after the other
    assert np.array_equal(epoch_order(corpus, 0, 0, shuffle=False), np.arange(10))


def test_stream_splits_across_ranks_and_workers(corpus_dir):
    per_rank = []
    for rank in range(3):
        s = CorpusStream(corpus_dir, seed=5, rank=rank, world_size=3)
        s.set_epoch(2)
        got = [int(x.index) for x in s]
        assert len(got) == len(s) == 4  # ceil(10 / 3): padded by wrapping around
        per_rank.append(got)
    flat = [i for got in per_rank for i in got]
    assert set(flat) == set(range(10)) and len(flat) == 12
    order = epoch_order(Corpus(corpus_dir), 5, 2)
    assert per_rank[1] == [int(order[1]), int(order[4]), int(order[7]), int(order[0])]

    dropped = [[int(x.index) for x in CorpusStream(corpus_dir, rank=r, world_size=3, drop_last=True)] for r in range(3)]
    assert [len(d) for d in dropped] == [3, 3, 3] and len({i for d in dropped for i in d}) == 9

    s = CorpusStream(corpus_dir, seed=5, rank=0, world_size=2, image_format="uint8")
    s.set_epoch(1)
    want = s.rank_indices().tolist()
    loaded = [b for b in DataLoader(s, batch_size=None, num_workers=2)]
    assert sorted(int(b.index) for b in loaded) == sorted(want)  # workers share the rank's samples, no repeats
    assert loaded[0].image.dtype == torch.uint8


def test_stream_uses_the_process_group_by_default(corpus_dir):
    s = CorpusStream(corpus_dir)
    assert (s.rank, s.world_size, len(s)) == (0, 1, 10)
    with pytest.raises(ValueError):
        CorpusStream(corpus_dir, rank=2, world_size=2)


def test_corpus_without_landmarks_yields_nan(tmp_path):
    build(tmp_path, gen=TinyNoLandmarks(), landmarks="none", count=3)
    s = CorpusDataset(tmp_path)[1]
    assert s.landmarks.shape == (68, 2) and torch.isnan(s.landmarks).all()


def test_open_validates_the_corpus(tmp_path):
    with pytest.raises(CorpusIntegrityError, match="no corpus here"):
        Corpus(tmp_path)
    build(tmp_path, count=6)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    # a shard whose arrays do not match the manifest's layout
    bad = dict(doc, arrays=dict(doc["arrays"], ws={"dtype": "float32", "shape": [6, 9]}))
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(CorpusIntegrityError, match="array ws is F32"):
        Corpus(tmp_path)
    bad = dict(doc, shards=doc["shards"][:1])
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(CorpusIntegrityError, match="cover 4 of 6"):
        Corpus(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(dict(doc, version=99)))
    with pytest.raises(CorpusIntegrityError, match="version 99"):
        Corpus(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    assert np.array_equal(Corpus(tmp_path).read(5)["images"],
                          load_file(str(tmp_path / "shard-00001.safetensors"))["images"][1])
