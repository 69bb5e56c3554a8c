"""The synthetic face world: a StyleGAN-like generator whose images are renders with exactly known parameters."""

from .world import SyntheticGenerator, SyntheticParamMap


def make_synthetic(spec: str = "synthetic", device: str = "cpu") -> SyntheticGenerator:
    """A generator spec "synthetic[:RESOLUTION[:SEED]]" -> SyntheticGenerator (default 256 px, seed 0)."""
    parts = spec.split(":")
    if parts[0] != "synthetic" or len(parts) > 3:
        raise ValueError(f"bad synthetic generator spec {spec!r}; expected synthetic[:RESOLUTION[:SEED]]")
    try:
        resolution = int(parts[1]) if len(parts) > 1 and parts[1] else 256
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise ValueError(f"bad synthetic generator spec {spec!r}; RESOLUTION and SEED are integers") from None
    if not 16 <= resolution <= 1024:
        raise ValueError(f"synthetic resolution must be within 16..1024, got {resolution}")
    return SyntheticGenerator(resolution=resolution, seed=seed, device=device)


__all__ = ["SyntheticGenerator", "SyntheticParamMap", "make_synthetic"]
