"""The `stylerig` command: one entry point, one subcommand per job.

Each part of the engine registers its own subcommands (a `register(subparsers)` function in its
`commands` module), so this file only lists them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in the order `stylerig --help` lists them.
COMMAND_MODULES = (
    "stylerig_engine.facemodel.commands",  # assets
    "stylerig_engine.render.commands",  # render-faces
    "stylerig_engine.stylegan2.commands",  # weights, generate
    "stylerig_engine.corpus.commands",  # corpus, corpus-check
    "stylerig_engine.rig.commands",  # train, evaluate
    "stylerig_server.commands",  # serve
    "stylerig_engine.blender.commands",  # addon build, render-blend, demo
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="stylerig", description="Photoreal face animation from a 3D rig (StyleRig).")
    parser.add_argument("--version", action="version", version=f"stylerig {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
