"""The live edit's cost: RigNet alone against RigNet with DFR's corrections (rig/editing.py), per frame, beside
the generator's own time for that frame, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/live_edit.py                 # shipped rig, synthetic:256
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/live_edit.py --generator random:256 --repeats 20

Each frame is one latent (the live preview edits one face at a time), edited towards another held-out face's
exact parameters; "pose" edits the pose alone, "all" pose, expression and illumination composed. The times are
medians over --repeats calls (wall; one torch thread), after a warm-up call.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from stylerig_engine.corpus.writer import resolve_generator
from stylerig_engine.rig import load_rig
from stylerig_engine.rig.evaluate import HELD_OUT_SEED, sample_latents
from stylerig_engine.synthetic import make_synthetic


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="synthetic:256", help="synthetic:R, or random:R (a StyleGAN2 of that size)")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rig = load_rig()
    gen = resolve_generator(args.generator, "cpu")
    world = make_synthetic("synthetic:64")  # the held-out latents and targets of the rig's own world
    ws = sample_latents(world, 2, HELD_OUT_SEED, 0.8)
    w, target = ws[:1], world.true_params(ws[1:])
    print(f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread, "
          f"load {os.getloadavg()[0]:.1f}; live corrections {rig.corrections}")
    with torch.no_grad():
        generator_ms = median_ms(lambda: gen.synthesis(w), max(3, args.repeats // 20))
        print(f"generator {args.generator} alone: {generator_ms:.1f} ms per frame")
        for name, modes in (("pose", ("pose",)), ("all", ("pose", "expression", "illumination"))):
            targets = {m: target for m in modes}
            alone = median_ms(lambda t=targets: rig.edit_many(w, t, corrections={}), args.repeats)
            live = median_ms(lambda t=targets: rig.edit_many(w, t), args.repeats)
            print(f"{name:<5} RigNet alone {alone:6.2f} ms   with DFR's corrections {live:6.2f} ms   "
                  f"(+{live - alone:.2f} ms, {100 * (live - alone) / generator_ms:.1f} % of the generator)")


if __name__ == "__main__":
    main()
