"""StyleRig's networks: DFR (W+ -> face parameters) and RigNets (W+ + target parameters -> edited W+)."""

from .checkpoints import CheckpointError, load_network, save_network
from .editing import COMPOSITION_ORDER, SHIPPED_RIG, Rig, load_rig
from .networks import DFR, RigNet, default_layers

__all__ = ["COMPOSITION_ORDER", "CheckpointError", "DFR", "Rig", "RigNet", "SHIPPED_RIG", "default_layers",
           "load_network", "load_rig", "save_network"]
