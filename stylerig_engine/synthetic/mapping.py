"""A StyleGAN-like mapping network z -> w for the synthetic world (fixed, seeded, never trained)."""

from __future__ import annotations

import math

import torch
from torch import nn


class SyntheticMapping(nn.Module):
    """z (B, z_dim) -> w (B, w_dim): 2nd-moment normalisation, then `num_layers` leaky-ReLU layers.

    Like StyleGAN's, w is a non-Gaussian, correlated code; `w_avg` and the per-channel `w_std` are
    measured over `stats_samples` latents at construction (deterministic for a seed).
    """

    def __init__(self, z_dim: int, w_dim: int, *, num_layers: int = 4, seed: int = 0, stats_samples: int = 8000):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        dims = [z_dim] + [w_dim] * num_layers
        weights = [torch.randn(a, b, generator=g) * math.sqrt(2.0 / a) for a, b in zip(dims[:-1], dims[1:])]
        biases = [0.1 * torch.randn(b, generator=g) for b in dims[1:]]
        for i, (w, b) in enumerate(zip(weights, biases)):
            self.register_buffer(f"weight{i}", w)
            self.register_buffer(f"bias{i}", b)
        self.num_layers, self.z_dim, self.w_dim = num_layers, z_dim, w_dim
        z = torch.randn(stats_samples, z_dim, generator=g)
        with torch.no_grad():
            w = self.forward(z)
        self.register_buffer("w_avg", w.mean(0))
        self.register_buffer("w_std", w.std(0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be (B, {self.z_dim})"
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = x @ getattr(self, f"weight{i}") + getattr(self, f"bias{i}")
            if i < self.num_layers - 1:  # variance-preserving leaky ReLU; the last layer is linear
                x = nn.functional.leaky_relu(x, 0.2) * math.sqrt(2.0 / (1.0 + 0.2 ** 2))
        return x
