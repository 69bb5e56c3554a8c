"""StyleGAN2 generator: network (networks.py), weight loaders (nvidia_pickle.py, rosinality.py, weights.py),
optional fast inference (inference.py) and the `weights` / `generate` commands (commands.py).

The names below are imported lazily so that `stylerig --help` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Generator": "networks",
    "MappingNetwork": "networks",
    "SynthesisNetwork": "networks",
    "config_f": "networks",
    "load_generator": "weights",
    "save_generator": "weights",
    "GENERATOR_FACTORIES": "weights",
    "PRETRAINED": "weights",
    "fetch": "weights",
    "load_nvidia_pickle": "nvidia_pickle",
    "UnsafePickleError": "nvidia_pickle",
    "load_rosinality": "rosinality",
    "FastGenerator": "inference",
    "InferenceOptions": "inference",
}

__all__ = [
    "GENERATOR_FACTORIES",
    "PRETRAINED",
    "FastGenerator",
    "Generator",
    "InferenceOptions",
    "MappingNetwork",
    "SynthesisNetwork",
    "UnsafePickleError",
    "config_f",
    "fetch",
    "load_generator",
    "load_nvidia_pickle",
    "load_rosinality",
    "save_generator",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
