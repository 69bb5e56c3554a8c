"""Subcommands of the Blender side: `addon build`, `render-blend`, `demo`."""

from __future__ import annotations

import sys

from . import demo, render_blend


def register(subparsers) -> None:
    p = subparsers.add_parser("addon", help="the Blender extension: build its installable zip")
    sub = p.add_subparsers(dest="addon_command", metavar="ACTION")
    b = sub.add_parser("build", help="write dist/stylerig-<version>.zip (blender_manifest.toml + addon/)")
    b.add_argument("--out", default="dist", help="output folder (default dist)")
    b.set_defaults(func=run_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    render_blend.register(subparsers)
    demo.register(subparsers)


def run_build(args) -> int:
    from .package import PackageError, build

    try:
        path = build(args.out)
    except PackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
