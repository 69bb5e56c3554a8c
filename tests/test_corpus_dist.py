"""Multi-process corpus writing: torchrun with 2 CPU ranks (gloo) equals the single-process corpus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from test_corpus import SPEC, build, file_digests

from stylerig_engine.corpus import Corpus

ROOT = Path(__file__).resolve().parents[1]
ARGS = {"count": 22, "shard_size": 4, "size": 16, "mixing": 3}


def test_torchrun_two_ranks_equals_single_process(tmp_path):
    ref = tmp_path / "ref"
    build(ref, batch=3, **ARGS)
    out = tmp_path / "dist"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stylerig_engine", "corpus", "--generator", SPEC, "--out", str(out), "--device", "cpu",
           "--batch", "3", "--quiet"]
    for k, v in ARGS.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0 of 2" in r.stdout
    assert file_digests(out) == file_digests(ref)  # same shards, same manifest, same SHA256SUMS; no rank files
    assert len(Corpus(out, verify=True)) == 22


def test_single_process_resumes_a_killed_multi_process_run(tmp_path):
    """Rank progress files of an interrupted 2-rank run are picked up by a run with another world size."""
    ref = tmp_path / "ref"
    build(ref, batch=3, **ARGS)
    out = tmp_path / "c"
    out.mkdir()
    doc = json.loads((ref / "manifest.json").read_text())
    # rank 1 of 2 finished shards 1 and 3, rank 0 finished shard 0 and was killed; manifest.json is the initial one
    for rank, shards in ((0, [0]), (1, [1, 3])):
        part = dict(doc, complete=False, shards=[doc["shards"][k] for k in shards])
        (out / f"manifest.rank{rank}-of-2.json").write_text(json.dumps(part))
        for k in shards:
            shutil.copy(ref / f"shard-{k:05d}.safetensors", out)
    (out / "manifest.json").write_text(json.dumps(dict(doc, complete=False, shards=[])))
    report = build(out, batch=3, **ARGS)
    assert (report.shards_reused, report.shards_written) == (3, 3)
    assert file_digests(out) == file_digests(ref)
