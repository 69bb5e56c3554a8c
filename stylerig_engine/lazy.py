"""Packages whose public names are imported on first use, so that `stylerig --help` and other light
commands don't pay for importing torch."""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, where: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """(module __getattr__, __all__) for `package`, whose names live in its submodules as {submodule: names}.

    Use in a package's __init__: `__getattr__, __all__ = lazy_exports(__name__, {...})`. A name is imported
    from its submodule when first read and then cached in the package. (Type checkers see these names as Any;
    import from the submodule where the precise type matters.)
    """
    module_of = {name: module for module, names in where.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{module_of[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__, sorted(module_of)
