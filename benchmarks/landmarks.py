"""Landmark detectors against the synthetic world's exact landmarks, and on a real photograph.

For each detector (default: mediapipe, the offline default for real generators) this renders N faces of the
synthetic world (`synthetic:SIZE`, psi 0.7: turns up to about ±40°, expressions, lights, backgrounds), runs
the detector as the corpus writer does (through the detector registry, on the generator-resolution images)
and reports, against the exact 68 landmarks of the renders:
  - failures (no face found),
  - per-region pixel errors (median, 90th percentile) and the same over the 51 inner points (17-67), also in
    units of the inter-ocular distance (outer eye corners 36-45),
  - errors by head turn (|yaw| < 15°, 15-30°, > 30°),
  - the per-point signed bias (mean offset, inter-ocular units) of the worst points, the check of the
    478 -> 68 table (corpus/mediapipe68.py) against our renders,
  - milliseconds per image, wall and process CPU (one torch/OpenMP thread unless --threads).
Then the same detector on scikit-image's `astronaut` (a real photograph shipped inside the scikit-image wheel):
found or not, time, the inter-ocular distance, and with --overlay an image of the 68 numbered points to check
each one against the iBUG definition by eye.

    .venv/bin/python benchmarks/landmarks.py --count 64 --size 256 --json out/landmarks.json --overlay out/lm.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REGIONS = {
    "jaw": range(0, 17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "outer lips": range(48, 60),
    "inner lips": range(60, 68),
    "inner 51 (17-67)": range(17, 68),
}


def synthetic_faces(count: int, size: int, seed: int, psi: float):
    from stylerig_engine.corpus import resolve_generator, sample_latents, sample_seeds
    from stylerig_engine.params import ROTATION_NAMES

    gen = resolve_generator(f"synthetic:{size}")
    z, _ = sample_latents(sample_seeds(seed, 0, count), gen.z_dim, gen.num_ws, 1)
    ws = gen.mapping(torch.from_numpy(z[:, 0]).float(), psi=psi)
    images, exact, yaw = [], [], []
    rot = gen.layout.slice("rotation")
    with torch.no_grad():
        for i in range(0, count, 16):
            w = ws[i:i + 16]
            images.append(gen.synthesis(w))
            exact.append(gen.landmarks(w))
            yaw.append(gen.true_params(w)[:, rot][:, ROTATION_NAMES.index("yaw")])
    return gen, ws, torch.cat(images), torch.cat(exact).numpy(), np.degrees(torch.cat(yaw).numpy())


def run_detector(detector, ws: torch.Tensor, images: torch.Tensor, batch: int = 16):
    out = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(images), batch):
        out.append(detector(ws[i:i + batch], images[i:i + batch]).float().cpu().numpy())
    n = max(len(images), 1)
    return np.concatenate(out), 1000 * (time.perf_counter() - wall0) / n, 1000 * (time.process_time() - cpu0) / n


def errors(found: np.ndarray, exact: np.ndarray, yaw: np.ndarray) -> dict:
    ok = ~np.isnan(found).reshape(len(found), -1).any(1)
    iod = np.linalg.norm(exact[:, 36] - exact[:, 45], axis=1)
    dist = np.linalg.norm(found - exact, axis=2)  # (N, 68) pixels
    rep: dict = {"faces": int(len(found)), "failures": int((~ok).sum()),
                 "median_interocular_px": float(np.median(iod))}
    d, s = dist[ok], iod[ok][:, None]
    rep["regions"] = {name: {"median_px": float(np.median(d[:, list(r)])),
                             "p90_px": float(np.percentile(d[:, list(r)], 90)),
                             "median_iod": float(np.median((d / s)[:, list(r)]))}
                      for name, r in REGIONS.items()} if ok.any() else {}
    inner = list(REGIONS["inner 51 (17-67)"])
    bins = {"|yaw| < 15": np.abs(yaw) < 15, "15-30": (np.abs(yaw) >= 15) & (np.abs(yaw) < 30),
            ">= 30": np.abs(yaw) >= 30}
    rep["by_yaw"] = {}
    for name, sel in bins.items():
        fine = sel & ok
        rep["by_yaw"][name] = {"faces": int(sel.sum()), "failures": int((sel & ~ok).sum()),
                               "inner_median_px": float(np.median(dist[fine][:, inner])) if fine.any() else None,
                               "jaw_median_px": float(np.median(dist[fine][:, :17])) if fine.any() else None}
    if ok.any():
        front = ok & (np.abs(yaw) < 15)
        sel = front if front.sum() >= 5 else ok
        bias = np.mean((found[sel] - exact[sel]) / iod[sel][:, None, None], axis=0)  # (68, 2)
        size = np.linalg.norm(bias, axis=1)
        rep["bias_worst_points_iod"] = {int(k): [round(float(v), 4) for v in bias[k]] for k in np.argsort(-size)[:8]}
    return rep


def astronaut(detector, overlay: str | None) -> dict:
    try:
        from skimage import data
    except ImportError:
        return {"skipped": "scikit-image is not installed (pip install scikit-image)"}
    rgb = data.astronaut()  # (512, 512, 3) uint8
    images = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    found, wall_ms, cpu_ms = run_detector(detector, torch.zeros(1, 1, 1), images)
    lm = found[0]
    rep = {"found": bool(np.isfinite(lm).all()), "ms_wall": wall_ms, "ms_cpu": cpu_ms}
    if rep["found"]:
        rep["interocular_px"] = float(np.linalg.norm(lm[36] - lm[45]))
        rep["landmarks"] = np.round(lm, 1).tolist()
        if overlay:
            draw_overlay(rgb, lm, overlay)
            rep["overlay"] = overlay
    return rep


def draw_overlay(rgb: np.ndarray, lm: np.ndarray, path: str, zoom: int = 3) -> None:
    """The face crop, enlarged, with each of the 68 points and its number."""
    from PIL import Image, ImageDraw

    lo = np.floor(lm.min(0) - 25).clip(0).astype(int)
    hi = np.ceil(lm.max(0) + 25).astype(int)
    crop = Image.fromarray(rgb[lo[1]:hi[1], lo[0]:hi[0]]).resize(((hi - lo) * zoom).tolist(), Image.LANCZOS)
    d = ImageDraw.Draw(crop)
    for k, (x, y) in enumerate((lm - lo + 0.5) * zoom):
        colour = (255, 60, 60) if k < 17 else (60, 255, 60) if k < 36 else (80, 160, 255) if k < 48 else (255, 255, 0)
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        d.text((x + 3, y - 5), str(k), fill=colour)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    crop.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detectors", nargs="+", default=["mediapipe"])
    ap.add_argument("--count", type=int, default=64, help="synthetic faces")
    ap.add_argument("--size", type=int, default=256, help="synthetic world resolution")
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--overlay", default=None, help="write the astronaut's 68 numbered points here (PNG)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from stylerig_engine.corpus import CorpusConfigError, make_detector

    gen, ws, images, exact, yaw = synthetic_faces(args.count, args.size, args.seed, args.psi)
    report = {"synthetic": f"synthetic:{args.size}", "count": args.count, "psi": args.psi,
              "yaw_range_deg": [float(yaw.min()), float(yaw.max())], "threads": args.threads, "detectors": {}}
    for name in args.detectors:
        try:
            detector = make_detector(name, gen, "cpu")
        except CorpusConfigError as e:
            report["detectors"][name] = {"unavailable": str(e)}
            print(f"{name}: unavailable: {e}", file=sys.stderr)
            continue
        run_detector(detector, ws[:2], images[:2])  # warm-up (model load, first-call set-up)
        found, wall_ms, cpu_ms = run_detector(detector, ws, images)
        rep = errors(found, exact, yaw)
        rep.update(ms_per_image_wall=wall_ms, ms_per_image_cpu=cpu_ms,
                   astronaut=astronaut(detector, args.overlay if name == args.detectors[0] else None))
        report["detectors"][name] = rep
        print(f"\n{name}: {rep['faces'] - rep['failures']}/{rep['faces']} faces found, "
              f"{wall_ms:.1f} ms/image wall, {cpu_ms:.1f} ms CPU; inter-ocular {rep['median_interocular_px']:.0f} px")
        print(f"{'region':<18} {'median px':>9} {'p90 px':>7} {'median/iod':>10}")
        for region, r in rep["regions"].items():
            print(f"{region:<18} {r['median_px']:9.2f} {r['p90_px']:7.2f} {r['median_iod']:10.3f}")
        for b, r in rep["by_yaw"].items():
            inner = "-" if r["inner_median_px"] is None else f"{r['inner_median_px']:.2f} px"
            jaw = "-" if r["jaw_median_px"] is None else f"{r['jaw_median_px']:.2f} px"
            print(f"yaw {b:<10} {r['faces']:3d} faces, {r['failures']} failures, inner {inner}, jaw {jaw}")
        a = rep["astronaut"]
        print(f"astronaut: {a}" if "found" not in a else
              f"astronaut (skimage, 512²): found={a['found']}, {a['ms_wall']:.1f} ms, "
              f"inter-ocular {a.get('interocular_px', float('nan')):.1f} px")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
