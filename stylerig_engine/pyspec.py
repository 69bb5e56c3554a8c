"""`py:package.module:name` specs: user code plugged in by name (custom generators, identity models, tests)."""

from __future__ import annotations

import importlib
import inspect


def import_spec(spec: str):
    """The object `name` of module `package.module` named by a "py:package.module:name" spec.

    Raises ValueError naming the spec when it is malformed or the module or name cannot be imported."""
    module, _, attr = spec.removeprefix("py:").rpartition(":")
    if not spec.startswith("py:") or not module or not attr:
        raise ValueError(f"spec {spec!r}: expected py:package.module:name")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"spec {spec!r}: {e}") from e


def takes_keyword(fn, name: str) -> bool:
    """Whether `fn` accepts keyword argument `name` (True when its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
