"""Why a keyed eyeWide does not reach the portrait (docs/rig.md, item 11). Three measurements on the synthetic world:

1. `coupling`: over untruncated faces, how high eyeWide goes while the brows rest (the world draws eyeWide with the
   "surprise" archetype, which raises browInnerUp more), and the image change of each key at its 99th percentile.
2. `resolution`: per-image photometric fits (FIT_WEIGHTS below) of held-out faces rendered at 256² and fitted
   at 64², 128² and 256²: the correlation of their eyeWide reading with the truth.
3. `identifiable`: the same 64² fit started from the true parameters with eyeWide set to 0: does the loss find it?

    .venv/bin/python experiments/eye_wide.py coupling
    .venv/bin/python experiments/eye_wide.py resolution [--count 48]     # ~10 min on one core
    .venv/bin/python experiments/eye_wide.py identifiable [--count 48]
"""

from __future__ import annotations

import argparse
import json

import torch

from stylerig_engine.corpus.writer import resize_images, scale_landmarks
from stylerig_engine.render.face import FaceRenderer
from stylerig_engine.rig import load_rig
from stylerig_engine.rig.evaluate import HELD_OUT_SEED, blendshape_index, expression_correlation, sample_latents
from stylerig_engine.rig.fitting import fit_landmarks, fit_parameters
from stylerig_engine.rig.losses import FaceLoss, LossWeights, region_model, to_generator_space
from stylerig_engine.synthetic import make_synthetic

KEYS = {"eyeWide": (["eyeWide_L", "eyeWide_R"], 0.44), "eyeBlink": (["eyeBlink_L", "eyeBlink_R"], 0.81),
        "mouthSmile": (["mouthSmile_L", "mouthSmile_R"], 0.84),
        "browInnerUp": (["browInnerUp_L", "browInnerUp_R"], 0.63),
        "jawOpen": (["jawOpen"], 0.73)}  # the world's 99th percentiles (evaluate's animator keys)
# The photometric fit of these measurements: a landmark fit, then 200 steps with the landmark fit's priors and a weak
# albedo prior (the table's fit when they were made; fitting.fit_photometric has since read better, docs/rig.md 12).
FIT_WEIGHTS = LossWeights(photometric=1.0, landmark=200.0, identity_reg=1e-4, albedo_reg=1e-5, expression_reg=1e-6)
READ = ("eyeWide_L", "eyeWide_R", "eyeBlink_L", "browInnerUp_L", "mouthSmile_L")


def coupling(world) -> None:
    index = blendshape_index(world.layout)
    p = torch.cat([world.true_params(sample_latents(world, 8192, 900 + i, 1.0)) for i in range(12)])
    wide = p[:, [index["eyeWide_L"], index["eyeWide_R"]]].mean(1)
    brow = p[:, [index["browInnerUp_L"], index["browInnerUp_R"]]].mean(1)
    print(f"{len(p)} untruncated faces; eyeWide 99th percentile {wide.quantile(0.99):.3f}")
    for low in (0.1, 0.2, 0.3, 0.4):
        at = wide >= low
        print(f"eyeWide >= {low}: {int(at.sum())} faces, browInnerUp among them median {brow[at].median():.2f}, "
              f"min {brow[at].min():.2f}")
    renderer = FaceRenderer(world.model, world.layout, image_size=64)
    faces = world.true_params(sample_latents(world, 32, HELD_OUT_SEED, 0.8))
    base = to_generator_space(renderer(faces).image)
    for key, (names, value) in KEYS.items():
        keyed = faces.clone()
        keyed[:, [index[n] for n in names]] = value
        change = (to_generator_space(renderer(keyed).image) - base).norm(dim=1)
        print(f"{key} at {value}: {float((change > 0.05).float().sum((1, 2)).median()):.0f} pixels change by > 0.05 "
              f"at 64² (summed change {float(change.sum((1, 2)).median()):.1f})")


def _held_out(world, count: int):
    ws = sample_latents(world, count, HELD_OUT_SEED, 0.8)
    with torch.no_grad():
        return ws, world.true_params(ws), world.synthesis(ws), world.landmarks(ws)


def _report(name: str, layout, estimate: torch.Tensor, truth: torch.Tensor) -> None:
    correlation = expression_correlation(layout, estimate, truth)
    print(name, json.dumps({k: round(correlation[k], 2) for k in READ if k in correlation}), flush=True)


def resolution(count: int) -> None:
    world = make_synthetic("synthetic:256")
    rig = load_rig()
    ws, truth, images, landmarks = _held_out(world, count)
    start = rig.fit(ws)
    _report("DFR", world.layout, start, truth)
    for size in (64, 128, 256):
        renderer = FaceRenderer(region_model(world.model), world.layout, image_size=size)
        loss = FaceLoss(renderer, FIT_WEIGHTS)
        fitted = []
        for i in range(0, count, 16):
            small, points = resize_images(images[i:i + 16], size), scale_landmarks(landmarks[i:i + 16], 256, size)
            geometry = fit_landmarks(renderer, points, start[i:i + 16])
            fitted.append(fit_parameters(loss, small, points, geometry, steps=200, lr=0.02, clamp=True))
        fitted = torch.cat(fitted)
        _report(f"photometric fit at {size}²", world.layout, fitted, truth)


def identifiable(count: int) -> None:
    world = make_synthetic("synthetic:64")
    index = blendshape_index(world.layout)
    ws, truth, images, landmarks = _held_out(world, count)
    start = truth.clone()
    start[:, [index["eyeWide_L"], index["eyeWide_R"]]] = 0.0
    loss = FaceLoss(FaceRenderer(region_model(world.model), world.layout, image_size=64), FIT_WEIGHTS)
    fitted = fit_parameters(loss, images, landmarks, start, steps=200, lr=0.02, clamp=True)
    _report("fit from the truth with eyeWide at 0", world.layout, fitted, truth)
    wide = [index["eyeWide_L"], index["eyeWide_R"]]
    print(f"eyeWide mean: truth {truth[:, wide].mean():.3f}, fitted {fitted[:, wide].mean():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("coupling", "resolution", "identifiable"))
    ap.add_argument("--count", type=int, default=48, help="held-out faces fitted")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.what == "coupling":
        coupling(make_synthetic("synthetic:64"))
    elif args.what == "resolution":
        resolution(args.count)
    else:
        identifiable(args.count)


if __name__ == "__main__":
    main()
