"""Time the preflight of the real-generator path (stylerig_engine/preflight.py) on real-size random networks.

    .venv/bin/python benchmarks/preflight.py --generator random:256 --out out/preflight256 --threads 1
    python benchmarks/preflight.py --generator random:1024 --device cuda --count 64 --batch 32 --steps 20 \\
        --out /tmp/pf1024 --json pf1024.json           # on a GPU: memory and shapes at the recipe's batch

Prints the report: seconds for train all (corpus, DFR, RigNets, evaluation), for the resumed run, the serve
start and one rig-driven frame, the detector's no-face count, the generator hash; peak CUDA memory on a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="random:256")
    ap.add_argument("--out", required=True, help="run directory (replaced)")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--eval-count", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    from stylerig_engine.preflight import run_preflight

    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    report = run_preflight(args.generator, args.out, count=args.count, batch=args.batch, steps=args.steps,
                           eval_count=args.eval_count, device=args.device, serve=not args.no_serve,
                           threads=args.threads)
    report["total_s"] = time.perf_counter() - t0
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        report["cuda_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
