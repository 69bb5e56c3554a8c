"""The corpus writer: seeds, latents, mixing, stored arrays, shard layout, configuration checks, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_corpus_standin import TinyGenerator

from stylerig_engine import cli
from stylerig_engine.corpus import (
    Corpus,
    CorpusConfig,
    CorpusConfigError,
    build_corpus,
    sample_latents,
    sample_seeds,
)

SPEC = "py:test_corpus_standin:tiny"
ROOT = Path(__file__).resolve().parents[1]


def make_config(**kw) -> CorpusConfig:
    args = {"generator": SPEC, "count": 10, "size": 16, "psi": 0.7, "mixing": 1, "shard_size": 4, "seed": 0,
            "landmarks": "exact"}
    args.update(kw)
    return CorpusConfig(**args)


def build(out, gen=None, batch=3, verify=True, **kw):
    return build_corpus(make_config(**kw), out, generator=gen or TinyGenerator(), device="cpu", batch=batch,
                        verify=verify, progress=False, log=lambda m: None)


def all_arrays(root) -> dict[str, np.ndarray]:
    doc = json.loads((Path(root) / "manifest.json").read_text())
    shards = [load_file(str(Path(root) / r["file"])) for r in doc["shards"]]
    return {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}


def file_digests(root) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).iterdir())}


def _fmix32_py(h: int) -> int:
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


# ------------------------------------------------------------------------------------------------ seeds


def test_sample_seeds_follow_the_documented_formula_and_are_distinct():
    seeds = sample_seeds(7, 0, 200_000)
    assert seeds.dtype == np.int64 and seeds.min() >= 0 and seeds.max() < 2**32
    assert len(np.unique(seeds)) == 200_000  # a bijection of i: no duplicate samples in a StyleRig-size corpus
    key = _fmix32_py((7 + 0x9E3779B9) & 0xFFFFFFFF)
    for i in (0, 1, 12345, 199_999):
        assert seeds[i] == _fmix32_py(_fmix32_py(i) ^ key)
    assert np.array_equal(sample_seeds(7, 1000, 1010), seeds[1000:1010])  # depends on (seed, i) only
    other = sample_seeds(8, 0, 200_000)
    assert len(np.intersect1d(seeds, other)) < 50  # another base seed: another corpus


def test_sample_latents_without_mixing_use_nvidia_z():
    seeds = np.array([0, 5, 2**32 - 1])
    z, src = sample_latents(seeds, 12, 6, 1)
    assert z.shape == (3, 1, 12) and src.shape == (3, 6) and not src.any()
    for n, s in enumerate(seeds):
        assert np.array_equal(z[n, 0], np.random.RandomState(s).randn(1, 12)[0])


def test_sample_latents_mixing_is_segments_of_layers():
    seeds = sample_seeds(0, 0, 400)
    z, src = sample_latents(seeds, 12, 6, 4)
    z1, _ = sample_latents(seeds, 12, 6, 1)
    assert np.array_equal(z[:, 0], z1[:, 0])  # the first latent is the unmixed one
    ks = []
    for n, s in enumerate(seeds):
        rs = np.random.RandomState(s)
        assert np.array_equal(z[n], rs.randn(4, 12))
        k = min(rs.randint(1, 5), 6)
        cuts = np.sort(rs.choice(np.arange(1, 6), size=k - 1, replace=False))
        row = src[n]
        assert row[0] == 0 and np.all(np.diff(row.astype(int)) >= 0) and row.max() == k - 1
        assert np.array_equal(np.flatnonzero(np.diff(row.astype(int))) + 1, cuts)  # crossovers at the cuts
        ks.append(k)
    assert set(ks) == {1, 2, 3, 4}  # k uniform in 1..mixing


def test_config_validation():
    with pytest.raises(CorpusConfigError, match="count"):
        make_config(count=0)
    with pytest.raises(CorpusConfigError, match="mixing"):
        make_config(mixing=0)
    with pytest.raises(CorpusConfigError, match="seed"):
        make_config(seed=-1)
    cfg = make_config(count=10, shard_size=4)
    assert cfg.num_shards == 3 and [cfg.shard_range(k) for k in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert "count" not in cfg.identity() and cfg.identity()["ws_dtype"] == "float32"


# ------------------------------------------------------------------------------------------------ writing


def test_corpus_arrays_are_the_generator_samples(tmp_path):
    gen = TinyGenerator()
    report = build(tmp_path, gen, mixing=3, psi=0.7, size=16, count=10, shard_size=4, batch=3)
    assert (report.shards_written, report.samples_written, report.shards_reused) == (3, 10, 0)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["complete"] and doc["count"] == 10 and doc["num_shards"] == 3
    assert doc["config"]["generator"] == SPEC and doc["config"]["psi"] == 0.7 and doc["config"]["mixing"] == 3
    assert doc["generator"] == {"z_dim": 12, "w_dim": 8, "num_ws": 6, "img_resolution": 32,
                                "weights_sha256": doc["generator"]["weights_sha256"]}
    assert [(r["file"], r["start"], r["stop"]) for r in doc["shards"]] == [
        ("shard-00000.safetensors", 0, 4), ("shard-00001.safetensors", 4, 8), ("shard-00002.safetensors", 8, 10)]
    sums = (tmp_path / "SHA256SUMS").read_text().splitlines()
    for r, line in zip(doc["shards"], sums):
        digest = hashlib.sha256((tmp_path / r["file"]).read_bytes()).hexdigest()
        assert r["sha256"] == digest and line == f"{digest}  {r['file']}"
        assert r["bytes"] == (tmp_path / r["file"]).stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "SHA256SUMS", "manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]

    a = all_arrays(tmp_path)
    assert a["ws"].dtype == np.float32 and a["ws"].shape == (10, 6, 8)
    assert a["images"].dtype == np.uint8 and a["images"].shape == (10, 16, 16, 3)
    assert a["landmarks"].dtype == np.float32 and a["landmarks"].shape == (10, 68, 2)
    assert np.array_equal(a["index"], np.arange(10)) and np.array_equal(a["seeds"], sample_seeds(0, 0, 10))

    # recompute every sample independently, one at a time
    z, src = sample_latents(a["seeds"], 12, 6, 3)
    assert np.array_equal(a["mixing"], src)
    with torch.no_grad():
        for i in range(10):
            w = gen.mapping(torch.from_numpy(z[i]).float(), psi=0.7)  # (3, 6, 8): one W+ per latent
            ws = torch.stack([w[src[i, layer], layer] for layer in range(6)])
            np.testing.assert_allclose(a["ws"][i], ws.numpy(), atol=1e-6)
            img = gen.synthesis(ws[None])
            box = img.reshape(1, 3, 16, 2, 16, 2).mean((3, 5))  # 32 -> 16: 2x2 area average
            want = (box * 127.5 + 128).clamp(0, 255).floor()[0].permute(1, 2, 0).numpy()
            assert np.abs(a["images"][i].astype(float) - want).max() <= 1
            lm = gen.landmarks(ws[None])[0].numpy()
            np.testing.assert_allclose(a["landmarks"][i], (lm + 0.5) * 0.5 - 0.5, atol=1e-5)
    assert len({a["mixing"][i].max() for i in range(10)}) > 1  # some samples are mixed, some not
    assert np.abs(np.diff(a["images"].astype(int), axis=0)).mean() > 5  # samples differ


def test_samples_do_not_depend_on_shards_or_batches(tmp_path):
    build(tmp_path / "a", shard_size=4, batch=3)
    build(tmp_path / "b", shard_size=5, batch=10)
    a, b = all_arrays(tmp_path / "a"), all_arrays(tmp_path / "b")
    for k in ("index", "seeds", "mixing"):
        assert np.array_equal(a[k], b[k])
    np.testing.assert_allclose(a["ws"], b["ws"], atol=1e-6)
    np.testing.assert_allclose(a["landmarks"], b["landmarks"], atol=1e-5)
    assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1


def test_upscaling_and_same_size(tmp_path):
    build(tmp_path / "same", size=32, count=3)
    build(tmp_path / "up", size=48, count=3)
    same, up = all_arrays(tmp_path / "same"), all_arrays(tmp_path / "up")
    assert up["images"].shape == (3, 48, 48, 3)
    np.testing.assert_allclose(up["landmarks"], (same["landmarks"] + 0.5) * 1.5 - 0.5, atol=1e-4)


def test_count_can_grow_and_shrink(tmp_path):
    build(tmp_path / "ref", count=14)
    out = tmp_path / "c"
    build(out, count=10)
    before = file_digests(out)
    mtimes = {k: (out / f"shard-0000{k}.safetensors").stat().st_mtime_ns for k in (0, 1)}
    report = build(out, count=14)
    assert (report.shards_reused, report.shards_written, report.samples_written) == (2, 2, 6)
    for k in (0, 1):
        name = f"shard-0000{k}.safetensors"
        assert (out / name).stat().st_mtime_ns == mtimes[k] and file_digests(out)[name] == before[name]
    assert file_digests(out) == file_digests(tmp_path / "ref")  # as if built at 14 from the start

    report = build(out, count=6)
    assert (report.shards_reused, report.shards_written) == (1, 1)
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["count"] == 6 and [r["stop"] for r in doc["shards"]] == [4, 6]
    assert len(Corpus(out, verify=True)) == 6


@pytest.mark.parametrize("change", [
    {"psi": 0.5}, {"size": 8}, {"mixing": 2}, {"seed": 1}, {"shard_size": 5}, {"landmarks": "none"},
    {"generator": "py:test_corpus_standin:tiny_no_landmarks"},
])
def test_changed_configuration_is_refused(tmp_path, change):
    build(tmp_path)
    before = file_digests(tmp_path)
    key = next(iter(change))
    with pytest.raises(CorpusConfigError, match=f"another configuration.*{key}"):
        build(tmp_path, **change)
    assert file_digests(tmp_path) == before  # nothing touched


def test_changed_generator_weights_are_refused(tmp_path):
    build(tmp_path)
    with pytest.raises(CorpusConfigError, match="another generator.*weights_sha256"):
        build(tmp_path, gen=TinyGenerator(seed=1))


def test_exact_landmarks_need_a_generator_that_has_them(tmp_path):
    from test_corpus_standin import TinyNoLandmarks

    with pytest.raises(CorpusConfigError, match="--landmarks auto or mediapipe"):
        build(tmp_path, gen=TinyNoLandmarks())
    report = build(tmp_path, gen=TinyNoLandmarks(), landmarks="none")
    assert report.samples_written == 10
    assert "landmarks" not in all_arrays(tmp_path)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_writes_and_refuses(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "c"
    argv = ["corpus", "--generator", "py:test_corpus_standin:tiny_no_landmarks", "--count", "6", "--size", "16",
            "--shard-size", "4", "--batch", "4", "--out", str(out), "--device", "cpu", "--landmarks", "none"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "samples/s" in captured.err  # tqdm's rate
    assert "6 samples in 2 shards" in captured.out
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["config"]["landmarks"] == "none"
    assert cli.main([*argv, "--psi", "0.9"]) == 2
    assert "another configuration (psi: 0.7 there, 0.9 asked)" in capsys.readouterr().err
    assert cli.main(["corpus-check", str(out)]) == 0
    assert "ok (6 samples, 2 shards" in capsys.readouterr().out


def test_cli_entry_point_runs_as_a_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    r = subprocess.run([sys.executable, "-m", "stylerig_engine", "corpus", "--generator", SPEC, "--count", "3",
                        "--size", "16", "--out", str(tmp_path), "--quiet", "--device", "cpu"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "manifest.json").read_text())["config"]["landmarks"] == "exact"
