"""A preflight of the real-generator path without the real weights.

`run_preflight("random:256", out)` runs what a user with NVIDIA's FFHQ weights would run, on a randomly
initialised StyleGAN2 of the same size (same num_ws, w_dim, channels and cost), for a few steps:

  1. `stylerig train all --generator random:R --landmarks preflight ...`: the corpus (real-size synthesis, the
     offline detector run on every image), DFR, the RigNets, the evaluation;
  2. the same command again with more steps and --resume: every network continues from its checkpoint;
  3. `stylerig serve --generator random:R --rignet OUT`: a client fits a face and renders a rig-driven frame
     through the socket, at the generator's size;
  4. the rig <-> generator identity: the corpus manifest's generator hash equals the served generator's.

Why `--landmarks preflight`: a random network's images are noise, in which no detector finds a face (that
is the honest outcome, and it is reported: `no_face` of `count`). With only NaN landmarks DFR has nothing to
train on, so inside the preflight, and only there, the default face's neutral landmarks stand in for the
missing ones; the corpus manifest records `landmarks: preflight`, so such a corpus or rig cannot pass for a
real one. Everything else (shapes, memory, speed, resume, serving) is what the real run will meet.

Used by benchmarks/preflight.py (timings, 1024²) and tests/test_preflight.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path


def _stylerig(argv: list[str]) -> tuple[int, str, str]:
    """Run a `stylerig` subcommand in this process; (exit code, stdout, stderr)."""
    from .cli import main

    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _log_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def run_preflight(generator: str, out: str | os.PathLike, *, count: int = 8, batch: int = 4, steps: int = 2,
                  eval_count: int = 4, device: str = "cpu", modes: str = "pose,expression,illumination",
                  serve: bool = True, threads: int | None = None) -> dict:
    """Run the chain; returns a report (times in seconds, what was checked). Raises AssertionError on a failure."""
    out = Path(out)
    report: dict = {"generator": generator, "device": device, "count": count, "batch": batch, "steps": steps}
    common = ["train", "all", "--generator", generator, "--landmarks", "preflight", "--count", str(count),
              "--batch", str(batch), "--distill-batch", str(batch), "--eval-count", str(eval_count), "--modes", modes,
              "--out", str(out),
              "--device", device, "--mixing", "5"]
    if threads:
        common += ["--threads", str(threads)]
    t0 = time.perf_counter()
    rc, stdout, stderr = _stylerig([*common, "--dfr-steps", str(steps), "--distill-steps", str(steps),
                                    "--rignet-steps", str(steps)])
    report["train_all_s"] = time.perf_counter() - t0
    assert rc == 0, f"train all failed ({rc}):\n{stderr[-3000:]}"
    manifest = json.loads((out / "corpus" / "manifest.json").read_text())
    assert manifest["config"]["landmarks"] == "preflight", manifest["config"]
    report["corpus_generator"] = manifest["generator"]
    summary = [line for line in stderr.splitlines() if line.startswith("preflight landmarks:")]
    assert summary, "the preflight detector's summary is missing from the corpus log"
    report["detector"] = summary[-1]
    mode_list = [m for m in modes.split(",") if m]
    names = ["dfr"] + [f"rignet-{m}" for m in mode_list]
    for name in names:
        assert (out / f"{name}.safetensors").exists(), f"{name}.safetensors missing"
        assert _log_steps(out / f"{name}.log.jsonl")[-1] == steps
    rig = out / "rig" if (out / "rig").is_dir() else out  # where train all put the rig (after a consistency ramp)
    evaluation = json.loads((rig / "evaluation.json").read_text())
    assert evaluation["training"]["landmarks"] == "preflight"
    report["evaluation_rows"] = sorted(k for k in evaluation if isinstance(evaluation[k], dict))

    # Resume: the same command with one more step continues each network from its checkpoint.
    t0 = time.perf_counter()
    rc, _, stderr = _stylerig([*common, "--dfr-steps", str(steps + 1), "--distill-steps", str(steps + 1),
                               "--rignet-steps", str(steps + 1), "--resume"])
    report["resume_s"] = time.perf_counter() - t0
    assert rc == 0, f"train all --resume failed ({rc}):\n{stderr[-3000:]}"
    for name in names:
        logged = _log_steps(out / f"{name}.log.jsonl")
        assert logged[-1] == steps + 1 and logged.count(steps) == 1, (name, logged)  # continued, not restarted
    report["resumed"] = names

    if serve:
        report["serve"] = serve_check(generator, rig, device, manifest["generator"], mode_list[0])
    return report


def serve_check(generator: str, rig: Path, device: str, corpus_generator: dict, mode: str) -> dict:
    """Start `stylerig serve` with the rig, fit a face, render one rig-driven frame; check the generator's identity."""
    import numpy as np
    from stylerig_addon.client import Client

    from .corpus import describe_generator, resolve_generator

    served = describe_generator(resolve_generator(generator, device))
    assert served == corpus_generator, \
        f"the served generator differs from the rig's corpus: {served} vs {corpus_generator}"
    res = corpus_generator["img_resolution"]
    token = rig / "serve-token"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "stylerig_engine", "serve", "--generator", generator, "--rignet",
                             str(rig), "--device", device, "--no-unix", "--token-file", str(token), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None  # both are pipes
    try:
        line = proc.stdout.readline()
        assert line, f"serve printed nothing:\n{proc.stderr.read()[-3000:]}"
        info = json.loads(line)
        started = time.perf_counter() - t0
        with Client.connect(info) as c:
            face = c.new_face(1)
            p = c.fit(face)
            t1 = time.perf_counter()
            frame = c.render(face, targets={mode: p}, size=res)
            frame_s = time.perf_counter() - t1
            c.shutdown()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert frame.shape == (res, res, 4) and frame.dtype == np.uint8, (frame.shape, frame.dtype)
    return {"start_s": started, "frame_s": frame_s, "frame_shape": list(frame.shape), "params": int(np.size(p)),
            "generator_sha256": served["weights_sha256"]}
