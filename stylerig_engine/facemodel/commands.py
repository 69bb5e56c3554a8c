"""Subcommands of this package (filled in by its owner)."""


def register(subparsers) -> None:
    pass
