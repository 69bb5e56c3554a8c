"""stylerig engine: StyleRig (Tewari et al., CVPR 2020) — rig a frozen StyleGAN2 with a 3D morphable face model."""

__version__ = "0.1.0"
