"""Shared pieces of the headless commands: an engine to talk to (given, or started as a child process), the
rig's own viewport-style render (Workbench), and the contact sheet."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path


def add_engine_args(p, *, default_generator: str = "synthetic") -> None:
    g = p.add_argument_group("engine (default: start one for this run)")
    g.add_argument("--engine", metavar="ADDRESS",
                   help="a running engine: host:port, unix:PATH or the JSON line `stylerig serve` printed")
    g.add_argument("--token-file", metavar="F", help="its token file (when ADDRESS does not name it)")
    g.add_argument("--generator", default=default_generator,
                   help=f"generator of the engine started here (default {default_generator})")
    g.add_argument("--rignet", metavar="DIR", help="DFR + RigNets for the engine started here")
    g.add_argument("--device", default=None, help="cuda | cpu for the engine started here")
    g.add_argument("--oracle-fit", action="store_true",
                   help="synthetic generator: the engine fits faces with the exact ground truth")


@contextlib.contextmanager
def engine_client(args, log_path: Path, *, oracle_fit: bool = False) -> Iterator:
    """A connected Client: to --engine, else to a `stylerig serve` child started here (stopped at the end)."""
    from stylerig_addon.client import Client
    from stylerig_addon.engine_process import LocalEngine, engine_command, serve_args

    if args.engine:
        with Client.connect(args.engine, token_file=args.token_file, client_name="stylerig-headless/1") as c:
            yield c
        return
    engine = LocalEngine.start(
        engine_command(python=sys.executable),
        serve_args(generator=args.generator, rignet=args.rignet or "", device=args.device or "",
                   oracle_fit=oracle_fit or bool(getattr(args, "oracle_fit", False))),
        log_path=log_path)
    try:
        with Client.connect(engine.listen, client_name="stylerig-headless/1") as c:
            yield c
    finally:
        engine.stop()


def setup_workbench(scene, size: int) -> None:
    """Workbench, flat lighting, per-vertex colours: the rig as the engine's shading model sees it."""
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x = scene.render.resolution_y = int(size)
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    scene.display.shading.light = "FLAT"
    scene.display.shading.color_type = "VERTEX"
    scene.display.shading.background_type = "VIEWPORT"
    scene.display.shading.background_color = (0.05, 0.05, 0.05)
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"


def render_rig(scene, rig, path: Path) -> Path:
    """Render the rig's camera view at the current frame (Workbench, SH shading baked per vertex) to `path`."""
    import bpy
    from stylerig_addon.rig import bake_shading

    bake_shading(rig, update=False)
    scene.camera = rig.camera
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return path


def contact_sheet(columns: Sequence[tuple[str, Sequence[Path]]], row_labels: Sequence[str], path: Path,
                  *, title: str = "", cell: int = 256) -> Path:
    """A grid: one column per (label, [image per row]); row labels on the left."""
    from PIL import Image, ImageDraw

    pad, label_w, head_h = 6, 120, 22
    title_h = 26 if title else 0
    n_rows = len(row_labels)
    w = label_w + len(columns) * (cell + pad) + pad
    h = title_h + head_h + n_rows * (cell + pad) + pad
    sheet = Image.new("RGB", (w, h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 6), title, fill=(235, 235, 235))
    for r, label in enumerate(row_labels):
        y = title_h + head_h + r * (cell + pad) + cell // 2
        draw.text((pad, y - 6), label, fill=(220, 220, 220))
    for c, (label, images) in enumerate(columns):
        x = label_w + c * (cell + pad)
        draw.text((x + 4, title_h + 4), label, fill=(220, 220, 220))
        for r, img_path in enumerate(images):
            y = title_h + head_h + r * (cell + pad)
            with Image.open(img_path) as im:
                sheet.paste(im.convert("RGB").resize((cell, cell), Image.BILINEAR), (x, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
