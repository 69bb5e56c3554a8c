"""Training speed of DFR and RigNet: steps/s and samples/s on CPU (and CUDA when available).

    .venv/bin/python benchmarks/train.py [--size 64] [--batch 32] [--steps 10] [--devices cpu cuda] [--json out.json]

Builds a small synthetic corpus in a temporary directory, then times optimisation steps (after a warm-up
step) of DFR and of a pose RigNet, exactly as `stylerig train` runs them.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="image resolution of the corpus and the renderer")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per network")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from stylerig_engine.corpus import CorpusConfig, build_corpus
    from stylerig_engine.rig.train import TrainConfig, train
    from stylerig_engine.synthetic import SyntheticGenerator

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               "torch": torch.__version__, "size": args.size, "batch": args.batch, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        G = SyntheticGenerator(resolution=args.size)
        build_corpus(CorpusConfig(generator=f"synthetic:{args.size}", count=args.batch * 2, size=args.size,
                                  psi=0.8), tmp / "corpus", generator=G, progress=False)
        for device in devices:
            for net in ("dfr", "rignet"):
                extra = {} if net == "dfr" else dict(mode="pose", dfr=str(tmp / device / "dfr.safetensors"))
                out = tmp / device
                # one warm-up step, then the timed steps as a resumed run
                warm = TrainConfig(net=net, corpus=str(tmp / "corpus"), out=str(out), steps=1, batch=args.batch,
                                   device=device, **extra)
                train(warm, progress=False)
                t0 = time.perf_counter()
                train(warm, progress=False, resume=True)  # nothing left to do: measures the run's set-up
                setup = time.perf_counter() - t0
                timed = TrainConfig(**{**warm.__dict__, "steps": 1 + args.steps})
                t0 = time.perf_counter()
                train(timed, progress=False, resume=True)
                if device == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0 - setup
                row = dict(device=device, net=net, steps_per_s=args.steps / dt,
                           samples_per_s=args.steps * args.batch / dt)
                results["rows"].append(row)
                print(f"{device:5s} {net:7s} {row['steps_per_s']:7.2f} steps/s {row['samples_per_s']:8.1f} samples/s "
                      f"({args.size}², batch {args.batch})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
