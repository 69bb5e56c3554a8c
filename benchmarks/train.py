"""Training speed of DFR and RigNet: steps/s and samples/s on CPU (and CUDA when available), per precision and
with or without torch.compile, side by side in one run.

    .venv/bin/python benchmarks/train.py [--size 64] [--batch 32] [--steps 10] [--devices cpu cuda]
        [--precisions fp32 bf16] [--compile off|on|both] [--lr-scaling sqrt] [--json out.json]

Builds a small synthetic corpus in a temporary directory, then times optimisation steps of DFR and of a pose
RigNet, exactly as `stylerig train` runs them: per variant, one step (which pays torch.compile's compilation),
a resumed run with one more step (which pays any recompilation of the new run's networks), then the timed
resumed run, less the set-up time of a resumed run with nothing to do. A row whose timed steps still compiled
says so (`recompiled`).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="image resolution of the corpus and the renderer")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per network and variant")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    ap.add_argument("--precisions", nargs="+", default=["fp32"], help="TrainConfig.precision values to time")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="off",
                    help="time every precision without torch.compile (off), with it (on) or both")
    ap.add_argument("--lr-scaling", default="none", help="TrainConfig.lr_scaling (the recipe's; no effect on speed)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from stylerig_engine.corpus import CorpusConfig, build_corpus
    from stylerig_engine.rig.train import TrainConfig, train
    from stylerig_engine.synthetic import SyntheticGenerator

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    compile_variants = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    variants = [(p, c) for c in compile_variants for p in args.precisions]
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               "torch": torch.__version__, "size": args.size, "batch": args.batch, "steps": args.steps, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        G = SyntheticGenerator(resolution=args.size)
        build_corpus(CorpusConfig(generator=f"synthetic:{args.size}", count=args.batch * 2, size=args.size,
                                  psi=0.8), tmp / "corpus", generator=G, progress=False)
        for device in devices:
            for precision, compiled in variants:
                variant = f"{precision}{'+compile' if compiled else ''}"
                out = tmp / device / variant
                for net in ("dfr", "rignet"):
                    extra = {} if net == "dfr" else dict(mode="pose", dfr=str(out / "dfr.safetensors"))
                    cfg = TrainConfig(net=net, corpus=str(tmp / "corpus"), out=str(out), steps=1, batch=args.batch,
                                      device=device, precision=precision, compile=compiled,
                                      lr_scaling=args.lr_scaling, **extra)
                    t0 = time.perf_counter()
                    train(cfg, progress=False)
                    first_step = time.perf_counter() - t0
                    train(replace(cfg, steps=2), progress=False, resume=True)
                    t0 = time.perf_counter()
                    train(replace(cfg, steps=2), progress=False, resume=True)  # nothing left: the run's set-up
                    setup = time.perf_counter() - t0
                    graphs = compiled_graphs()
                    t0 = time.perf_counter()
                    train(replace(cfg, steps=2 + args.steps), progress=False, resume=True)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - t0 - setup
                    row = dict(device=device, net=net, precision=precision, compile=compiled,
                               steps_per_s=args.steps / dt, samples_per_s=args.steps * args.batch / dt,
                               first_step_s=first_step, recompiled=compiled_graphs() > graphs)
                    if device == "cuda":
                        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                        torch.cuda.reset_peak_memory_stats()
                    results["rows"].append(row)
                    print(f"{device:5s} {net:7s} {variant:13s} {row['steps_per_s']:7.2f} steps/s "
                          f"{row['samples_per_s']:8.1f} samples/s  first step {first_step:6.1f} s"
                          f"{'  (timed steps recompiled)' if row['recompiled'] else ''} "
                          f"({args.size}², batch {args.batch})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
