"""Crash safety of the corpus writer: SIGKILL mid-run, interrupted runs, corrupted and missing shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_corpus import SPEC, build, file_digests, make_config
from test_corpus_standin import TinyGenerator

from stylerig_engine.corpus import Corpus, CorpusIntegrityError, build_corpus
from stylerig_engine.fileio import sha256_file

ROOT = Path(__file__).resolve().parents[1]
KILL_ARGS = {"count": 24, "shard_size": 4, "size": 16, "mixing": 2}


def start_run(out: Path, delay: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), STANDIN_DELAY=str(delay), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "stylerig_engine", "corpus", "--generator", SPEC, "--out", str(out), "--quiet",
           "--device", "cpu", "--batch", "3", "--landmarks", "exact"]
    for k, v in KILL_ARGS.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listed_shards(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def kill_when(proc: subprocess.Popen, out: Path, shards: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while listed_shards(out) < shards:
        assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
        assert time.monotonic() < end, "run too slow"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def check_consistent(out: Path) -> None:
    """What a killed run leaves: a valid manifest whose every listed shard is complete and verifies."""
    doc = json.loads((out / "manifest.json").read_text())
    assert not doc["complete"]
    for r in doc["shards"]:
        assert sha256_file(out / r["file"]) == r["sha256"]
    with pytest.raises(CorpusIntegrityError, match="incomplete"):
        Corpus(out)


def test_sigkill_and_resume_equals_an_uninterrupted_run(tmp_path):
    ref = tmp_path / "ref"
    build(ref, batch=3, **KILL_ARGS)
    out = tmp_path / "killed"
    # kill once after the first shard is recorded, then again a few shards further
    kill_when(start_run(out, delay=0.15), out, 1)
    check_consistent(out)
    first = listed_shards(out)
    kill_when(start_run(out, delay=0.15), out, first + 2)
    check_consistent(out)
    assert listed_shards(out) >= first + 2
    done = start_run(out, delay=0.0)
    stdout, stderr = done.communicate(timeout=120)
    assert done.returncode == 0, stderr
    assert "reused" in stdout and "reused 0" not in stdout
    assert file_digests(out) == file_digests(ref)  # bit for bit, manifest included
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(Corpus(out, verify=True)) == 24


def test_interrupted_run_resumes(tmp_path):
    build(tmp_path / "ref")

    def stop_after(k):
        if k == 1:
            raise KeyboardInterrupt

    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        build_corpus(make_config(), out, generator=TinyGenerator(), device="cpu", batch=3, progress=False,
                     after_shard=stop_after)
    check_consistent(out)
    assert listed_shards(out) == 2
    report = build(out)
    assert (report.shards_reused, report.shards_written, report.samples_written) == (2, 1, 2)
    assert file_digests(out) == file_digests(tmp_path / "ref")


def test_shard_written_but_not_recorded_and_stale_temporaries(tmp_path):
    build(tmp_path / "ref")
    out = tmp_path / "c"
    build(out)
    # as if killed between renaming shard 2 into place and recording it
    doc = json.loads((out / "manifest.json").read_text())
    doc["shards"] = doc["shards"][:2]
    doc["complete"] = False
    (out / "manifest.json").write_text(json.dumps(doc))
    (out / "SHA256SUMS").unlink()
    (out / ".shard-00002.safetensors.x1y2.tmp").write_bytes(b"half a shard")
    (out / ".manifest.json.abcd.tmp").write_text("{")
    logs = []
    report = build_corpus(make_config(), out, generator=TinyGenerator(), device="cpu", batch=3, progress=False,
                          log=logs.append)
    assert (report.shards_reused, report.shards_written, report.shards_repaired) == (2, 1, 0)
    assert any("removed 2 temporary" in m for m in logs)
    assert file_digests(out) == file_digests(tmp_path / "ref")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_shard_is_detected_and_regenerated(tmp_path, damage):
    out = tmp_path / "c"
    build(out)
    good = file_digests(out)
    shard = out / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF  # same size, one image byte changed
        shard.write_bytes(bytes(data))
        Corpus(out)  # sizes and layout still fine: only the checksum catches it
        with pytest.raises(CorpusIntegrityError, match="SHA-256 mismatch"):
            Corpus(out, verify=True)
        assert build(out, verify=False).shards_written == 0  # --no-verify trusts the size
    elif damage == "truncate":
        shard.write_bytes(bytes(data[:-100]))
        with pytest.raises(CorpusIntegrityError, match="bytes, the manifest says"):
            Corpus(out)
    else:
        shard.unlink()
        with pytest.raises(CorpusIntegrityError, match="missing"):
            Corpus(out)
    logs = []
    report = build_corpus(make_config(), out, generator=TinyGenerator(), device="cpu", batch=3, progress=False,
                          log=logs.append)
    assert (report.shards_reused, report.shards_repaired, report.shards_written) == (2, 1, 1)
    assert any("shard-00001.safetensors" in m and "regenerating" in m for m in logs)
    assert file_digests(out) == good
