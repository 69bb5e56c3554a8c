"""Why a DFR trained on its self-supervised loss does not read most expressions, and what reads them.

Two measurements on the synthetic world (held-out latents, exact truth), both in docs/rig.md:

1. `signal`: for each blendshape an animator keys, set it to 0.8 on real faces and compare what DFR's loss
   gains (the landmark term it explains, the pixels it changes) with what the statistical prior charges for it.
2. `fits`: read the 20 most varying blendshapes by landmark fits (fitting.fit_landmarks, no render) from DFR's
   reading or from the prior mean, with several prior weights, and report the correlation with the truth.

    .venv/bin/python experiments/expression_signal.py signal
    .venv/bin/python experiments/expression_signal.py fits [--rig DIR] [--count 1024]
"""

from __future__ import annotations

import argparse
import time

import torch

from stylerig_engine.render.face import FaceRenderer
from stylerig_engine.rig import load_rig
from stylerig_engine.rig.evaluate import (HELD_OUT_SEED, block_errors, blendshape_index, expression_correlation,
                                          sample_latents)
from stylerig_engine.rig.fitting import fit_landmarks
from stylerig_engine.rig.losses import LossWeights, landmark_weights, region_model
from stylerig_engine.synthetic import make_synthetic

KEYS = ("mouthSmile_L", "eyeBlink_L", "jawOpen", "browInnerUp_L", "mouthPucker", "eyeWide_L", "mouthFrown_L",
        "noseSneer_L", "browDown_L", "cheekSquint_L", "browOuterUp_L")


def signal(world, renderer, count: int) -> None:
    layout = world.layout
    p = world.true_params(sample_latents(world, count, HELD_OUT_SEED, 0.8))
    index = blendshape_index(layout)
    base_lm, base = renderer.landmarks(p), renderer(p)
    weights, reg = LossWeights(), LossWeights().expression_reg
    mean, std = float(layout.prior_mean[index["jawOpen"]]), float(layout.prior_std[index["jawOpen"]])
    print(f"{'blendshape at 0.8':<18}{'max landmark shift':>20}{'pixels changed':>16}{'landmark term gained':>22}"
          f"{'prior charge':>14}")
    for name in KEYS:
        q = p.clone()
        q[:, index[name]] = 0.8
        lm = renderer.landmarks(q)
        shift = (lm - base_lm).norm(dim=-1).max(1).values
        changed = ((renderer(q).image - base.image).abs().sum(1) > 0.02).float().sum((1, 2))
        shift_sq = ((lm - base_lm) / renderer.image_size).square().sum(-1)
        gained = weights.landmark * (shift_sq * landmark_weights()).mean(-1)
        charge = reg * (((q[:, index[name]] - mean) / std) ** 2 - ((p[:, index[name]] - mean) / std) ** 2)
        print(f"{name:<18}{shift.median():>17.2f} px{changed.median():>16.0f}{gained.median():>22.1e}"
              f"{charge.median():>14.1e}")


def fits(world, renderer, rig, count: int) -> None:
    layout = world.layout
    w = sample_latents(world, count, HELD_OUT_SEED, 0.8)
    truth, landmarks = world.true_params(w), world.landmarks(w)
    prior_mean = torch.as_tensor(layout.prior_mean).expand(count, -1).clone()
    for start_name, start in (("DFR", rig.fit(w)), ("prior mean", prior_mean)):
        for identity_reg, expression_reg in ((1e-3, 1e-3), (1e-3, 1e-5), (1e-4, 1e-6)):
            t0 = time.perf_counter()
            weights = LossWeights(photometric=0.0, landmark=200.0, identity_reg=identity_reg, albedo_reg=0.0,
                                  expression_reg=expression_reg)
            fitted = fit_landmarks(renderer, landmarks, start, steps=300, weights=weights)
            seconds = time.perf_counter() - t0
            corr = expression_correlation(layout, fitted, truth)
            rotation = block_errors(layout, fitted, truth)["rotation"].median()
            print(f"start {start_name}, prior id {identity_reg:g} expr {expression_reg:g}: rotation {rotation:.2f}°, "
                  f"correlation {min(corr.values()):.2f}..{max(corr.values()):.2f} ({seconds:.0f} s)")
            print("   " + ", ".join(f"{n} {r:.2f}" for n, r in corr.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("signal", "fits"))
    ap.add_argument("--rig", default=None, help="rig whose DFR starts the fits (default: shipped)")
    ap.add_argument("--count", type=int, default=None, help="held-out faces (default 64 / 1024)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = make_synthetic("synthetic:64")
    renderer = FaceRenderer(region_model(world.model), world.layout, image_size=64)
    if args.what == "signal":
        signal(world, renderer, args.count or 64)
    else:
        fits(world, renderer, load_rig(args.rig), args.count or 1024)


if __name__ == "__main__":
    main()
