"""Subcommands of the renderer: `stylerig render-faces`."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

# The render-faces line-up. Poses: (name, (pitch, yaw, roll) in degrees), under the "key" light.
POSES = (("yaw-45", (0, -45, 0)), ("yaw-20", (0, -20, 0)), ("frontal", (0, 0, 0)), ("yaw+20", (0, 20, 0)),
         ("yaw+45", (0, 45, 0)), ("pitch-15", (-15, 0, 0)), ("pitch+15", (15, 0, 0)))
# Light directions from the face towards the light, world frame (+X = the viewer's right).
LIGHTS = {
    "key": {"direction": (0.4, 0.5, 1.0), "intensity": 0.75, "ambient": 0.35},
    "front": {"direction": (0.0, 0.0, 1.0), "intensity": 0.8, "ambient": 0.3},
    "viewer-left": {"direction": (-1.0, 0.2, 0.4), "intensity": 0.9, "ambient": 0.25},
    "viewer-right": {"direction": (1.0, 0.2, 0.4), "intensity": 0.9, "ambient": 0.25},
    "top": {"direction": (0.0, 1.0, 0.5), "intensity": 0.9, "ambient": 0.25},
    "ambient": {"direction": (0.0, 0.0, 1.0), "intensity": 0.0, "ambient": 0.9},
}
EXPRESSIONS = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R")
BACKGROUND_SRGB = 0.5  # neutral mid grey


def register(subparsers) -> None:
    p = subparsers.add_parser("render-faces", help="render the default face under a few poses, lights and expressions",
                              description="Render the default morphable face under poses (yaw -45..+45, pitch "
                                          "+-15), lights and expressions (jawOpen, smiles, blinks) to sRGB PNGs "
                                          "plus a contact sheet.")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--size", type=int, default=256, help="image width = height in pixels (default 256)")
    p.add_argument("--model", type=Path, default=None,
                   help="a morphable model .npz (default: the engine's default face model)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--backend", default="torch", help="rasteriser backend: torch (default), reference, naive")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the renderer's ops are small, and more threads than free "
                        "cores make OpenMP spin-wait, ~10x slower on a busy machine; 0 = torch's default)")
    p.set_defaults(func=run_render_faces)


def _load_model(path: Path | None):
    from ..facemodel.model import MorphableModel

    if path is not None:
        return MorphableModel.load(path)
    try:
        from ..facemodel import load_default_model
    except ImportError as e:
        raise SystemExit(f"render-faces: no default face model available yet ({e}); pass --model FILE.npz") from e
    return load_default_model()


def lineup(renderer):
    """The names and the (N, D) tensor of parameter vectors that render-faces draws."""
    import torch

    from .shading import sh_directional

    lay = renderer.layout
    names, rows = [], []
    ill, rot = lay.slice("illumination"), lay.slice("rotation")
    base = renderer.neutral_params(1)[0]

    def add(name, rotation=(0, 0, 0), light="key", expression=None):
        p = base.clone()
        p[ill] = sh_directional(**LIGHTS[light], dtype=p.dtype).to(p.device)
        p[rot] = torch.tensor([math.radians(a) for a in rotation], dtype=p.dtype)
        for ex, w in (expression or {}).items():
            p[lay.offset("expression") + renderer.expression_names.index(ex)] = w
        names.append(name)
        rows.append(p)

    for name, r in POSES:
        add(f"pose_{name}", rotation=r)
    for light in LIGHTS:
        if light != "key":
            add(f"light_{light}", light=light)
    for ex in EXPRESSIONS:
        if ex in renderer.expression_names:
            add(f"expr_{ex}", rotation=(0, 0, 0), expression={ex: 1.0})
        else:
            print(f"render-faces: the model has no expression {ex!r}; skipped", file=sys.stderr)
    return names, torch.stack(rows)


def to_uint8(image):
    """(3, H, W) linear-RGB tensor -> (H, W, 3) uint8 sRGB numpy array."""
    import numpy as np

    from .shading import linear_to_srgb

    return (linear_to_srgb(image.detach().float().cpu()).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def contact_sheet(images: list, labels: list[str], columns: int = 7):
    """Tile (H, W, 3) uint8 images with a caption under each into one PIL image."""
    from PIL import Image, ImageDraw

    h, w = images[0].shape[:2]
    cap = 14
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * (h + cap)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for i, (img, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * w, (i // columns) * (h + cap)
        sheet.paste(Image.fromarray(img), (x, y))
        draw.text((x + 3, y + h + 1), label, fill=(230, 230, 230))
    return sheet


def run_render_faces(args) -> int:
    import torch
    from PIL import Image

    from ..fileio import atomic_write
    from .face import FaceRenderer
    from .shading import srgb_to_linear

    if args.size < 16:
        raise SystemExit("render-faces: --size must be at least 16")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = _load_model(args.model)
    renderer = FaceRenderer(model, image_size=args.size, device=args.device, backend=args.backend)
    names, params = lineup(renderer)
    bg = srgb_to_linear(torch.tensor(BACKGROUND_SRGB)).item()
    t0 = time.perf_counter()
    images = []
    with torch.no_grad():
        for s in range(0, len(names), 8):
            out = renderer(params[s:s + 8].to(args.device), background=torch.full((3,), bg))
            images += [to_uint8(im) for im in out.image]
    dt = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, img in zip(names, images):
        with atomic_write(args.out / f"{name}.png") as f:
            Image.fromarray(img).save(f, format="PNG")
    with atomic_write(args.out / "contact_sheet.png") as f:
        contact_sheet(images, names).save(f, format="PNG")
    print(f"rendered {len(names)} images of {model.name!r} ({model.num_vertices} vertices, {len(model.triangles)} "
          f"triangles) at {args.size}x{args.size} in {dt:.2f} s -> {args.out}")
    return 0
