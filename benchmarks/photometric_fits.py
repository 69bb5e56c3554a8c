"""The cost of a photometric fit table (`train dfr --fits photometric`, rig/fitting.py fit_photometric): seconds per
face at a batch size, and what a corpus of --corpus faces would take at that rate.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/photometric_fits.py --count 16          # one CPU core
    python benchmarks/photometric_fits.py --device cuda --count 1024 --batch 1024          # a GPU

The faces are held-out synthetic-world faces at --size (64² is what the shipped reader reads), started from the
shipped DFR's reading exactly as the table's chunks are; the fits run the full PHOTOMETRIC_FIT_STEPS. The reading
of rotation and of the animator's keys is printed beside the time, as a check that the fits are the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from stylerig_engine.render.face import FaceRenderer
from stylerig_engine.rig import load_rig
from stylerig_engine.rig.evaluate import HELD_OUT_SEED, block_errors, expression_correlation, sample_latents
from stylerig_engine.rig.fitting import PHOTOMETRIC_FIT_STEPS, fit_photometric
from stylerig_engine.rig.losses import region_model
from stylerig_engine.synthetic import make_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64, help="image side the fits render at")
    ap.add_argument("--count", type=int, default=16, help="faces fitted (timed)")
    ap.add_argument("--batch", type=int, default=16, help="faces per fit call (the table's chunk)")
    ap.add_argument("--corpus", type=int, default=60000, help="corpus size to project the table's time for")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    world = make_synthetic(f"synthetic:{args.size}", device=str(device))
    rig = load_rig(device=device)
    renderer = FaceRenderer(region_model(world.model), rig.layout, image_size=args.size, device=device)
    ws = sample_latents(world, args.count, HELD_OUT_SEED, 0.8).to(device)
    with torch.no_grad():
        images, landmarks, truth = world.synthesis(ws), world.landmarks(ws), world.true_params(ws)
        start = rig.fit(ws)
    fits = []
    t0 = time.perf_counter()
    for i in range(0, args.count, args.batch):
        fits.append(fit_photometric(renderer, images[i:i + args.batch], landmarks[i:i + args.batch],
                                    start[i:i + args.batch]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    fitted = torch.cat(fits)
    correlation = expression_correlation(rig.layout, fitted.cpu(), truth.cpu())
    rotation = block_errors(rig.layout, fitted.cpu(), truth.cpu())["rotation"].median()
    per_face = seconds / args.count
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "size": args.size, "count": args.count, "batch": args.batch, "steps": PHOTOMETRIC_FIT_STEPS,
        "seconds_per_face": round(per_face, 4),
        "corpus": args.corpus, "corpus_hours": round(per_face * args.corpus / 3600, 2),
        "rotation_deg_median": round(float(rotation), 3),
        "correlation": {k: round(v, 3) for k, v in correlation.items()
                        if k in ("mouthSmile_L", "eyeBlink_L", "jawOpen", "mouthPucker", "browInnerUp_L",
                                 "mouthFrown_L", "browDown_L")},
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
