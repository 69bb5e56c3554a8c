"""StyleRig's networks: DFR (W+ -> face parameters) and RigNets (W+ + target parameters -> edited W+).

Names are imported on first use, so that `stylerig --help` and other commands don't pay for importing torch.
"""

from importlib import import_module

_WHERE = {
    "checkpoints": ("CheckpointError", "load_network", "save_network"),
    "editing": ("COMPOSITION_ORDER", "SHIPPED_RIG", "Rig", "load_rig"),
    "networks": ("DFR", "RigNet", "default_layers"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value
