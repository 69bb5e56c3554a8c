"""The `stylerig` command: one entry point, one subcommand per job.

Each part of the engine registers its own subcommands (a `register(subparsers)` function in its
`commands` module), so this file only lists them.
"""

from __future__ import annotations

import argparse
import importlib
import os
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


# Set to 1 to see the traceback of an error instead of its one-line report.
TRACEBACK_ENV = "STYLERIG_TRACEBACK"


def _is_project_error(e: BaseException) -> bool:
    """Errors the project raises on purpose (bad input, missing or corrupt files, no network) carry messages
    written for the user; they are recognised by module, so that no torch module is imported to name them."""
    return isinstance(e, OSError) or any(
        c.__module__.startswith(("stylerig_engine", "stylerig_server", "stylerig_addon")) for c in type(e).__mro__
    )


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Every failure ends in one line on stderr and a non-zero exit: 1 for an error
    (2 for bad usage, from argparse; 130 when interrupted). ${TRACEBACK_ENV}=1 shows the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    action = next((v for k, v in vars(args).items() if (k.endswith("_command") or k == "kind") and isinstance(v, str)),
                  None)
    command = f"{args.command} {action}" if action else args.command
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        if _is_project_error(e):
            print(f"stylerig {command}: error: {message}", file=sys.stderr)
        else:  # a bug: still one line, with the way to the traceback for a report
            print(f"stylerig {command}: internal error: {type(e).__name__}: {message} "
                  f"(set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
