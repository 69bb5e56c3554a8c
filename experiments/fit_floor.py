"""How well does DFR's own loss identify each parameter block? Per-image fitting on the synthetic world.

Fits the parameters of held-out images by gradient descent on the DFR loss (photometric + landmark +
statistical regulariser; no network), starting from DFR's estimate or from the true parameters, and reports
the error of every block against the truth. What per-image fitting cannot recover, no DFR trained on that loss
can; what it recovers and DFR does not is the price of amortising the fit in a network (docs/rig.md).

    .venv/bin/python experiments/fit_floor.py [--start dfr|truth|mean] [--reg 1e-3] [--steps 600] [--count 48]
"""

from __future__ import annotations

import argparse
import time

import torch

from stylerig_engine.rig import load_rig
from stylerig_engine.rig.evaluate import HELD_OUT_SEED, ObservableErrors, block_errors, sample_latents
from stylerig_engine.rig.fitting import ImageReader, fit_parameters
from stylerig_engine.rig.losses import LossWeights
from stylerig_engine.synthetic import make_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", choices=("dfr", "truth", "mean"), default="dfr", help="initial parameters")
    ap.add_argument("--reg", type=float, default=LossWeights.identity_reg,
                    help="statistical regulariser weight (identity, albedo, expression)")
    ap.add_argument("--steps", type=int, default=600, help="Adam steps (cosine-decayed learning rate)")
    ap.add_argument("--lr", type=float, default=0.02, help="peak learning rate, in prior standard deviations")
    ap.add_argument("--count", type=int, default=48, help="held-out images")
    ap.add_argument("--rig", default=None, help="rig directory whose DFR gives the start (default: shipped)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    world = make_synthetic("synthetic:64")
    rig = load_rig(args.rig)
    layout = rig.layout
    w = sample_latents(world, args.count, HELD_OUT_SEED, 0.8)
    reader = ImageReader(rig, world, reg=args.reg)  # its images, landmarks and loss; the fit runs below
    images, landmarks = reader.observe(w)
    loss = reader.loss
    with torch.no_grad():
        truth = world.true_params(w)
    observable = ObservableErrors(world.model, layout)
    mean = torch.as_tensor(layout.prior_mean, dtype=torch.float32)
    start = {"dfr": rig.fit(w), "truth": truth, "mean": mean.expand_as(truth)}[args.start]

    def report(step: int, p: torch.Tensor) -> None:
        if step % max(1, args.steps // 4):
            return
        with torch.no_grad():
            terms = loss.data_terms(p, images, landmarks)
            errors = block_errors(layout, p, truth)
            obs = observable(p, truth)
        blocks = ", ".join(f"{b} {e.median():.2f}{'°' if b == 'rotation' else ''}" for b, e in errors.items())
        print(f"step {step:4d}: photometric {terms['photometric'].mean():.4f}, landmark "
              f"{terms['landmark'].mean():.1e} | median error: {blocks} | "
              f"expression {obs['expression_mm'].median():.2f}"
              f" mm, shading {100 * obs['shading'].median():.1f} %", flush=True)

    t0 = time.perf_counter()
    report(0, start)
    fit_parameters(loss, images, landmarks, start, steps=args.steps, lr=args.lr, callback=report)
    print(f"{args.count} images, {args.steps} steps in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
