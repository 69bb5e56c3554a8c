"""Renderer benchmark: milliseconds per image for the default (ICT) face.

    .venv/bin/python benchmarks/render.py                      # CPU (+ CUDA when available), all sizes
    .venv/bin/python benchmarks/render.py --sizes 128 --batches 1 --repeats 3
    .venv/bin/python benchmarks/render.py --model some_model.npz --json out.json

Measured, per device, image size and batch size (ms per image, median of --repeats after one warm-up):
  vis        the visibility pass alone (which triangle is nearest at each pixel)
  fwd        MeshRenderer forward: posed vertices -> image, mask, depth, landmarks, region masks
  fwd+bwd    the same plus backward of a loss on image and landmarks (grads to vertices, albedo, light)
  face f+b   FaceRenderer from parameter vectors (blendshapes, pose, albedo) forward + backward
for the fast pure-PyTorch rasteriser ("torch") and, side by side in the same run, the naive vectorised
bounding-box rasteriser it replaced ("naive"; batch 1 only: it loops over images, so its per-image cost
does not depend on the batch size). The machine is shared: the script prints `lscpu` and the load
average (`uptime`) before and after; numbers under load are slower and noisier.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch


def _sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except Exception as e:  # noqa: BLE001 - informational only
        return f"({cmd}: {e})"


def machine() -> dict:
    lscpu = _sh("lscpu")
    keep = ("Model name", "CPU(s):", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "L3 cache")
    return {"cpu": "; ".join(line.strip() for line in lscpu.splitlines() if line.strip().startswith(keep)),
                "uptime": _sh("uptime"), "torch": torch.__version__, "python": platform.python_version(),
                "threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def timeit(fn, *, repeats: int, device: str) -> tuple[float, float]:
    """(median, min) seconds of fn() after one warm-up call."""
    def once():
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    once()
    ts = [once() for _ in range(repeats)]
    return statistics.median(ts), min(ts)


def load_model(path):
    from stylerig_engine.facemodel.model import MorphableModel

    if path:
        return MorphableModel.load(path)
    from stylerig_engine.facemodel import load_default_model

    return load_default_model()


def bench(model, *, device: str, size: int, batch: int, backend: str, repeats: int, what: tuple[str, ...]):
    from stylerig_engine.render.face import FaceRenderer
    from stylerig_engine.render.rasterizer import visibility
    from stylerig_engine.render.rasterizer_naive import visibility_naive

    face = FaceRenderer(model, image_size=size, device=device, backend=backend)
    p = torch.as_tensor(face.layout.sample(batch, np.random.default_rng(0)), device=device)
    with torch.no_grad():
        verts, _ = face.geometry(p)
        albedo = face.albedo(p)
    sh = face.layout.split(p)["illumination"].contiguous()
    faces = face.faces
    renderer = face.renderer
    screen = renderer.camera.project(verts)
    vis = visibility if backend == "torch" else visibility_naive
    out = {}

    def render():
        with torch.no_grad():
            renderer(verts, faces, albedo=albedo, sh=sh, landmarks=face.landmark_ids, regions=face.regions)

    def render_backward():
        v, a, s = (t.detach().requires_grad_() for t in (verts, albedo, sh))
        o = renderer(v, faces, albedo=a, sh=s, landmarks=face.landmark_ids, regions=face.regions)
        (o.image.square().mean() + 1e-3 * o.landmarks.square().mean()).backward()

    def face_backward():
        q = p.detach().requires_grad_()
        o = face(q)
        (o.image.square().mean() + 1e-3 * o.landmarks.square().mean()).backward()

    jobs = {"vis": lambda: vis(screen, faces, (size, size)), "fwd": render, "fwdbwd": render_backward,
                "facefb": face_backward}
    for name in what:
        med, best = timeit(jobs[name], repeats=repeats, device=device)
        out[name] = (1e3 * med / batch, 1e3 * best / batch)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice). On a small shared machine 1 is often faster.")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline (slow at 512)")
    ap.add_argument("--model", default=None, help="model .npz (default: the default face model)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    model = load_model(args.model)
    info = machine()
    print(f"# renderer benchmark: {model.name}, {model.num_vertices} vertices, {len(model.triangles)} triangles")
    for k, v in info.items():
        print(f"# {k}: {v}")
    rows = []
    header = "| device | size | batch | rasteriser | vis | fwd | fwd+bwd | face f+b |"
    print(header)
    print("|" + "---|" * 8)
    for device in devices:
        for size in args.sizes:
            for batch in args.batches:
                backends = ["torch"] + (["naive"] if batch == 1 and not args.no_naive else [])
                for backend in backends:
                    what = ("vis", "fwd", "fwdbwd") + (("facefb",) if backend == "torch" else ())
                    repeats = args.repeats if backend == "torch" else max(1, min(args.repeats, 3))
                    r = bench(model, device=device, size=size, batch=batch, backend=backend, repeats=repeats,
                              what=what)
                    cells = [f"{r[k][0]:.1f}" if k in r else "-" for k in ("vis", "fwd", "fwdbwd", "facefb")]
                    print(f"| {device} | {size} | {batch} | {backend} | " + " | ".join(cells) + " |", flush=True)
                    rows.append({"device": device, "size": size, "batch": batch, "backend": backend,
                                     "ms_per_image": {k: {"median": v[0], "min": v[1]} for k, v in r.items()}})
    info["uptime_after"] = _sh("uptime")
    print(f"# uptime after: {info['uptime_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "model": model.name, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
