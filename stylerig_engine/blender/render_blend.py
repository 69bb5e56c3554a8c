"""`stylerig render-blend FILE.blend`: render a rigged, animated .blend through the engine, headless.

The synchronous twin of the add-on's "Render animation": the rig's parameters at every frame -> the engine's
batch_render -> frame_NNNN.png (resumable: frames already written for the same rig state are kept) -> an MP4
with Blender's FFmpeg.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .headless import add_engine_args, engine_client


def register(subparsers) -> None:
    p = subparsers.add_parser("render-blend", help="render a .blend with a StyleRig rig through the engine (headless)",
                              description=__doc__)
    p.add_argument("blend", metavar="FILE.blend")
    p.add_argument("--frames", metavar="RANGE", help="e.g. 1-120, 1-120:2 or 1,5,9-12 (default: the scene's range)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=None, help="image side (default: the generator's resolution)")
    p.add_argument("--no-mp4", action="store_true", help="write the PNG frames only")
    p.add_argument("--fps", type=float, default=None, help="MP4 frame rate (default: the scene's)")
    p.add_argument("--modes", default="pose,expression,illumination",
                   help="which rig blocks drive the image (RigNet modes, comma separated)")
    p.add_argument("--final-quality", action="store_true",
                   help="closed-loop editing: each frame checked by a per-image fit and corrected, so the face "
                        "follows the rig closer; seconds per frame (docs/benchmarks.md); needs --rignet")
    add_engine_args(p)
    p.set_defaults(func=run_render_blend)


def run_render_blend(args) -> int:
    blend = Path(args.blend)
    if not blend.is_file():
        print(f"error: {blend} does not exist")
        return 2
    import bpy
    from stylerig_addon.batch import BatchJob, encode_mp4, parse_frames
    from stylerig_addon.rig import find_rig

    try:
        frames = parse_frames(args.frames) if args.frames else None
    except ValueError as e:
        print(f"error: --frames: {e}")
        return 2
    bpy.ops.wm.open_mainfile(filepath=str(blend.resolve()))
    scene = bpy.context.scene
    rig = find_rig(bpy.context)
    if rig is None:
        print(f"error: {blend} has no StyleRig rig (build one with the add-on or `stylerig demo`)")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    modes = tuple(m for m in args.modes.split(",") if m)
    t = time.perf_counter()
    job = BatchJob.from_scene(scene, rig, out, frames=frames, size=args.size, modes=modes,
                              final_quality=args.final_quality)
    collect = time.perf_counter() - t
    with engine_client(args, out / "engine.log") as client:
        job.run(client)
    for note in job.notes:
        print(f"note: {note}")
    print(f"{job.summary()} in {job.seconds:.1f} s (parameters collected in {collect:.1f} s)")
    if job.status != "done":
        return 1
    result = {"frames": [str(p) for p in job.frame_paths()], "rendered": job.done, "skipped": job.skipped,
              "seconds": round(job.seconds, 2), "notes": job.notes, "final_quality": job.final_quality}
    if not args.no_mp4:
        fps = args.fps or scene.render.fps / scene.render.fps_base
        result["mp4"] = str(encode_mp4(job.frame_paths(), out / "stylerig.mp4", fps=fps))
        print(f"wrote {result['mp4']}")
    (out / "render.json").write_text(json.dumps(result, indent=1))
    return 0
