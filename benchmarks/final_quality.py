"""Final quality: seconds per frame of a final-quality batch render (closed-loop editing) against a plain one,
seconds per face of an exact "Match rig to face" fit, and how much closer the frames get to the rig's targets.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/final_quality.py                       # synthetic:64, 4 frames
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/final_quality.py --resolution 256 --frames 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/final_quality.py --sequential          # + one loop per mode

The engine is built as `stylerig serve --generator synthetic:R --rignet shipped` builds it, with the engine's
final-quality defaults (ImageReader steps 400, FINAL_ITERATIONS readings); frames go through
rig.final_quality.render_final one at a time, as the server's batch_render does. Each frame edits pose,
expression and illumination at once, towards another held-out face's exact parameters, and the error is
measured with the synthetic world's exact parameters of the edited latent (RMS over the controlled blocks in
prior standard deviations; rotation in degrees). `--sequential` adds the alternative design, one closed loop per
mode in edit order (pose, then expression, then illumination), for the same frames.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from stylerig_engine.engine import Engine, load_rig
from stylerig_engine.rig.evaluate import HELD_OUT_SEED, block_errors, sample_latents
from stylerig_engine.rig.final_quality import edit_final, final_quality, fit_final
from stylerig_engine.rig.fitting import closed_loop_edit
from stylerig_engine.synthetic import make_synthetic

MODES = ("pose", "expression", "illumination")
CONTROLLED = ("rotation", "translation", "expression", "illumination")


def controlled_error(layout, p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    z = layout.normalise(p) - layout.normalise(target)
    cols = torch.cat([torch.arange(layout.dim)[layout.slice(b)] for b in CONTROLLED])
    return z[:, cols].square().mean(1).sqrt()


def per_frame(fn, count: int) -> tuple[list, tuple[float, float]]:
    """fn(i) for every frame; (results, (wall seconds, CPU seconds) per frame). The CPU time of this process is
    what a frame costs on one core however busy a shared machine is; the wall time is what it took here."""
    t, c = time.perf_counter(), time.process_time()
    out = [fn(i) for i in range(count)]
    return out, ((time.perf_counter() - t) / count, (time.process_time() - c) / count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--sequential", action="store_true", help="also time one closed loop per mode, in edit order")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = make_synthetic(f"synthetic:{args.resolution}")
    fit, edit = load_rig("shipped")
    engine = Engine(world, world.model, world.layout, fit=fit, edit=edit, name=f"synthetic:{args.resolution}")
    fq = final_quality(engine)
    rig, layout = fq.rig, world.layout
    ws = sample_latents(world, args.frames, HELD_OUT_SEED, 0.8)
    target = world.true_params(ws.roll(1, 0))
    targets = engine.check_targets({m: target for m in MODES}, len(ws))

    def one(i: int) -> dict:
        return {m: t[i : i + 1] for m, t in targets.items()}

    def timed_render(edit_fn):
        """Edit then generate each frame alone (as batch_render does); the edited latents."""
        def frame(i: int) -> torch.Tensor:
            w = edit_fn(i)
            engine.synthesize(w, None)
            return w

        edited, seconds = per_frame(frame, args.frames)
        return torch.cat(edited), seconds

    engine.synthesize(ws[:1], one(0))  # warm-up: first-call allocations
    fq.reader.loss.data_terms(fq.rig.fit(ws[:1]), *fq.reader.observe(ws[:1]))  # and the renderer's caches
    rows, seconds = {}, {}
    rows["plain"], seconds["plain"] = timed_render(lambda i: rig.edit_many(ws[i : i + 1], one(i)))
    print(f"plain {seconds['plain']}", flush=True)
    rows["final"], seconds["final"] = timed_render(lambda i: edit_final(engine, ws[i : i + 1], one(i)))
    print(f"final {seconds['final']}", flush=True)
    handles = [engine.upload(w) for w in ws]
    _, fit_s = per_frame(lambda i: fit_final(engine, handles[i : i + 1]), args.frames)
    print(f"exact fit {fit_s}", flush=True)
    if args.sequential:
        def sequential(i: int) -> torch.Tensor:
            w = ws[i : i + 1]
            for m in MODES:
                w = closed_loop_edit(rig, fq.reader, w, m, one(i)[m], iterations=fq.iterations)
            return w

        rows["sequential"], seconds["sequential"] = timed_render(sequential)
        print(f"sequential {seconds['sequential']}", flush=True)
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread, "
                   f"load {os.getloadavg()[0]:.1f}",
        "resolution": args.resolution, "frames": args.frames, "fit_steps": fq.reader.steps,
        "fit_size": fq.reader.size, "iterations": fq.iterations,
        "exact_fit_seconds_per_face": round(fit_s[0], 3), "exact_fit_cpu_seconds_per_face": round(fit_s[1], 3),
        "rows": {},
    }
    print(f"synthetic:{args.resolution}, {args.frames} frames, pose+expression+illumination, fit {fq.reader.steps} "
          f"steps at {fq.reader.size}², {fq.iterations} readings; {result['machine']}")
    for name, w in rows.items():
        truth = world.true_params(w)
        err = controlled_error(layout, truth, target)
        rot = block_errors(layout, truth, target)["rotation"]
        wall, cpu = seconds[name]
        result["rows"][name] = {"seconds_per_frame": round(wall, 3), "cpu_seconds_per_frame": round(cpu, 3),
                                "controlled_rms": round(err.mean().item(), 4),
                                "rotation_deg": round(rot.mean().item(), 3)}
        print(f"{name:<11} {wall:8.3f} s/frame ({cpu:.3f} s CPU)   controlled-block RMS {err.mean():.4f} σ   "
              f"rotation {rot.mean():.2f}°")
    print(f"exact fit   {fit_s[0]:8.3f} s/face ({fit_s[1]:.3f} s CPU)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
