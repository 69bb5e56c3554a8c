"""StyleRig's networks: DFR (W+ -> face parameters) and RigNets (W+ + target parameters -> edited W+).

Names are imported on first use, so that `stylerig --help` and other commands don't pay for importing torch.
"""

from ..lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "checkpoints": ("CheckpointError", "load_network", "save_network"),
    "editing": ("COMPOSITION_ORDER", "SHIPPED_RIG", "Rig", "load_rig"),
    "networks": ("DFR", "RigNet", "default_layers"),
})
