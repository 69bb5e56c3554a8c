"""`stylerig demo`: the whole tool end to end, headless.

Starts an engine (`stylerig serve`, the synthetic generator by default, with the shipped DFR + RigNets when they
are there), builds the face rig in Blender (bpy), keyframes a short performance on it (head turn, smile, blink,
a key light sweeping across), renders it through the engine (batch_render) into PNG frames and an MP4, and
writes a contact sheet that puts the rig's own render (Workbench, same camera) beside the generated image at
the performance's key poses. Writes into --out:

    frames/frame_0001.png ...   the generated frames        stylerig.mp4       the movie (Blender's FFmpeg)
    rig/rig_0001.png ...        the rig at the key poses    contact_sheet.png  rig vs generated, side by side
    demo.blend                  the rigged, animated scene  summary.json       timings, frames/s, notes
    engine.log                  the engine's log
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from .headless import add_engine_args, contact_sheet, engine_client, render_rig, setup_workbench

# Key poses of the performance: frame (of 48) -> (yaw offset in degrees, smile, blink). Scaled to --frames.
KEY_POSES = ((1, 0.0, 0.0, 0.0), (12, 25.0, 0.3, 0.0), (20, 20.0, 0.9, 0.0), (28, -20.0, 0.9, 0.0),
             (34, -10.0, 0.4, 0.0), (36, -8.0, 0.3, 1.0), (38, -6.0, 0.2, 0.0), (48, 0.0, 0.0, 0.0))
SHEET_POSES = (1, 12, 20, 28, 36, 48)
LABELS = {1: "start", 12: "turn left", 20: "smile", 28: "turn right", 36: "blink", 48: "end"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="end to end: engine + Blender rig + keyframed performance -> frames, MP4, contact sheet",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--frames", type=int, default=48, help="length of the performance in frames (default 48)")
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=3, help="the generator's face (default 3)")
    p.add_argument("--psi", type=float, default=0.7)
    add_engine_args(p)
    p.set_defaults(func=run_demo, rignet=None)


def shipped_rignet() -> Path | None:
    """The shipped DFR + RigNets of the synthetic world, if this build has them."""
    from ..rig.editing import SHIPPED_RIG

    return SHIPPED_RIG if (SHIPPED_RIG / "dfr.safetensors").is_file() else None


def run_demo(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    if args.frames < 2:
        print("error: --frames must be at least 2")
        return 2
    if not args.engine and args.rignet is None and args.generator.startswith("synthetic"):
        rig_dir = shipped_rignet()
        if rig_dir is not None:
            args.rignet = str(rig_dir)
    synthetic = args.generator.startswith("synthetic")
    oracle = synthetic and not args.rignet and not args.engine

    t = time.perf_counter()
    try:
        engine_ctx = engine_client(args, out / "engine.log", oracle_fit=oracle)
        client = engine_ctx.__enter__()
    except Exception as e:
        if not args.rignet or args.engine:
            raise
        notes.append(f"the engine would not start with --rignet {args.rignet} ({str(e).splitlines()[0]}); "
                     "started without RigNets")
        args.rignet = None
        engine_ctx = engine_client(args, out / "engine.log", oracle_fit=synthetic)
        client = engine_ctx.__enter__()
    times["engine_start"] = time.perf_counter() - t
    try:
        return _demo(args, out, client, notes, times, t_all)
    finally:
        engine_ctx.__exit__(None, None, None)


def _demo(args, out: Path, client, notes: list[str], times: dict[str, float], t_all: float) -> int:
    import bpy
    from stylerig_addon import rig as R
    from stylerig_addon.batch import BatchJob, encode_mp4

    info = client.info()
    modes = info.get("edit_modes") or []
    if not modes:
        notes.append("the engine has no RigNets: every frame shows the face as the generator makes it (the raw "
                     "latent); the rig's performance is in the 'rig' row of the contact sheet")
    t = time.perf_counter()
    meta, arrays = client.geometry()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps = max(1, round(args.fps))
    scene.render.fps_base = scene.render.fps / args.fps
    rig = R.build_rig(meta, arrays, seed=args.seed, psi=args.psi)
    can_fit = bool(info.get("fit"))
    if can_fit:
        handle = client.new_face(args.seed, args.psi)
        base = client.fit(handle).astype(np.float64)
        client.release(handle)
        how = "the engine's DFR" if args.rignet else "the synthetic world's exact parameters (--oracle-fit)"
        notes.append(f"rig matched to face {args.seed} by {how}")
    else:
        base = rig.layout.neutral()
        notes.append("the engine cannot fit faces (no DFR): the rig starts from the model's neutral face")
    notes.extend(R.apply_params(rig, base))
    if can_fit:
        R.set_rest(rig)  # as "Match rig to face" does: the renders find the keys against what the rig shows
    times["rig_build"] = time.perf_counter() - t

    t = time.perf_counter()
    scale = (args.frames - 1) / 47.0
    frame_of = {k: 1 + round((k - 1) * scale) for k in {p[0] for p in KEY_POSES} | set(SHEET_POSES)}
    keyframe_performance(rig, base, frame_of, args.frames)
    scene.frame_start, scene.frame_end = 1, args.frames
    bpy.ops.wm.save_as_mainfile(filepath=str((out / "demo.blend").resolve()))
    job = BatchJob.from_scene(scene, rig, out / "frames", frames=range(1, args.frames + 1), size=args.size)
    times["animate_and_collect"] = time.perf_counter() - t

    t = time.perf_counter()
    job.run(client)
    times["batch_render"] = time.perf_counter() - t
    if job.status != "done":
        print(f"error: batch render {job.summary()}")
        return 1
    notes.extend(job.notes)
    t = time.perf_counter()
    mp4 = encode_mp4(job.frame_paths(), out / "stylerig.mp4", fps=args.fps)
    times["mp4"] = time.perf_counter() - t

    t = time.perf_counter()
    setup_workbench(scene, args.size)
    columns = []
    for key in SHEET_POSES:
        f = frame_of[key]
        scene.frame_set(f)
        rig_png = render_rig(scene, rig, out / "rig" / f"rig_{f:04d}.png")
        columns.append((f"{f}: {LABELS[key]}", [rig_png, job.frame_path(f)]))
    scene.frame_set(1)
    gen = info.get("generator", {})
    title = (f"stylerig demo - {gen.get('name')} generator, face {args.seed}, RigNets: "
             f"{', '.join(modes) if modes else 'none (raw latent)'}")
    sheet = contact_sheet(columns, ["rig (Workbench)", "generated"], out / "contact_sheet.png", title=title,
                          cell=min(args.size, 256))
    times["contact_sheet"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_all

    fps = job.done / times["batch_render"] if job.done and times["batch_render"] > 0 else 0.0
    summary = {
        "frames": args.frames, "size": args.size, "rendered": job.done, "skipped": job.skipped,
        "batch_frames_per_second": round(fps, 2), "seconds": {k: round(v, 2) for k, v in times.items()},
        "engine": {"generator": gen, "device": info.get("device"), "edit_modes": modes, "fit": info.get("fit")},
        "modes_used": list(job.modes_used), "outputs": {
            "frames": str(out / "frames"), "mp4": str(mp4), "contact_sheet": str(sheet),
            "blend": str(out / "demo.blend")},
        "notes": notes,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"demo: {args.frames} frames at {args.size} px in {times['batch_render']:.1f} s ({fps:.1f} frames/s); "
          f"total {times['total']:.1f} s")
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {out / 'frames'}/, {mp4}, {sheet}, {out / 'demo.blend'}")
    return 0


def keyframe_performance(rig, base: np.ndarray, frame_of: dict[int, int], n_frames: int) -> None:
    """Head turn, smile and blink on the rig's channels around the face's own parameters, and a warm key light
    sweeping from the subject's right to their left."""
    import bpy
    from mathutils import Euler, Matrix
    from stylerig_addon import rig as R

    lay = rig.layout
    head = rig.armature.pose.bones[R.HEAD]
    yaw0 = float(base[lay.slice("rotation")][1])
    blocks = rig.key_blocks
    smile = [blocks[n] for n in ("mouthSmile_L", "mouthSmile_R") if n in blocks]
    blink = [blocks[n] for n in ("eyeBlink_L", "eyeBlink_R") if n in blocks]
    expr = dict(zip(lay.entries("expression"), base[lay.slice("expression")]))
    for key, yaw, s, b in KEY_POSES:
        f = frame_of[key]
        head.rotation_euler[1] = yaw0 + math.radians(yaw)
        head.keyframe_insert("rotation_euler", index=1, frame=f)
        for kb in smile:
            kb.value = max(float(expr.get(kb.name, 0.0)), s)
            kb.keyframe_insert("value", frame=f)
        for kb in blink:
            kb.value = max(float(expr.get(kb.name, 0.0)), b)
            kb.keyframe_insert("value", frame=f)

    light = bpy.data.lights.new(f"{rig.armature.name} Key", "SUN")
    light.color = (1.0, 0.85, 0.7)
    light.energy = 0.45
    key = bpy.data.objects.new(light.name, light)
    for coll in rig.armature.users_collection:
        coll.objects.link(key)
    key.parent = rig.armature
    key.rotation_mode = "XYZ"
    previous = Euler((0.0, 0.0, 0.0))
    steps = 8
    for i in range(steps + 1):  # a key every 20 degrees, so the sweep follows the circle
        f = 1 + (n_frames - 1) * i / steps
        az, el = math.radians(-80.0 + 160.0 * i / steps), math.radians(25.0)
        d = np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
        previous = Matrix(R.rotation_to(d).tolist()).to_euler("XYZ", previous)
        key.rotation_euler = previous
        key.location = (d * 0.6).tolist()
        key.keyframe_insert("rotation_euler", frame=f)
        key.keyframe_insert("location", frame=f)
