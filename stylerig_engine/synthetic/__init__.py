"""The synthetic face world: a StyleGAN-like generator whose images are renders with exactly known parameters."""

from .world import SyntheticGenerator, SyntheticParamMap

__all__ = ["SyntheticGenerator", "SyntheticParamMap"]
