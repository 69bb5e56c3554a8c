"""h: W+ -> semantic parameters, the fixed, seeded, nonlinear map behind the synthetic world.

Each output block reads a weighted mix of W+ layers, StyleGAN-style: coarse layers carry pose with shape,
middle layers expression, fine layers illumination and albedo, with overlaps so that a naive latent edit on
one block's layers disturbs others. Every block is a random-feature network (sinusoidal hidden units) on a
random projection of its layers — smooth, but far from linear.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Layer weights per block for a 14-layer W+ (256² StyleGAN2). Coarse = 0-3, middle = 4-7, fine = 8-13.
# Every face block also leaks weakly into layers outside its main range (as in StyleGAN, where e.g. pose is
# mostly but not only coarse), so copying a block's main layers from another latent never transfers it exactly.
LAYER_MIX_14: dict[str, dict[int, float]] = {
    "pose": {0: 1.0, 1: 1.0, 2: 0.7, 3: 0.5, 4: 0.3, 5: 0.25, 6: 0.2},
    "identity": {0: 0.6, 1: 1.0, 2: 1.0, 3: 1.0, 4: 0.5, 5: 0.3},
    "expression": {2: 0.25, 3: 0.4, 4: 1.0, 5: 1.0, 6: 1.0, 7: 0.7, 8: 0.3, 9: 0.2},
    "albedo": {6: 0.3, 7: 0.6, 8: 1.0, 9: 1.0, 10: 1.0, 11: 0.5},
    "illumination": {2: 0.3, 7: 0.4, 8: 0.7, 9: 1.0, 10: 1.0, 11: 1.0, 12: 0.6, 13: 0.4},
    "background": {0: 0.5, 10: 1.0, 11: 1.0, 12: 1.0, 13: 1.0},
    "hair": {0: 1.0, 1: 1.0, 2: 0.5, 8: 0.5, 9: 0.5},
    "clothing": {0: 1.0, 1: 0.5, 11: 0.5, 12: 1.0},
}


def layer_mix(name: str, num_ws: int) -> dict[int, float]:
    """The block's layer weights, stretched to a W+ of `num_ws` layers (same coarse/middle/fine proportions)."""
    out: dict[int, float] = {}
    for layer, weight in LAYER_MIX_14[name].items():
        target = min(num_ws - 1, round(layer * (num_ws - 1) / 13))
        out[target] = max(out.get(target, 0.0), weight)
    return out


class RandomFeatureBlock(nn.Module):
    """W+ -> `out_dim` standardised outputs: project the mixed layers, sinusoidal features, linear readout.

    The readout is standardised over samples of the latent distribution at construction so that every
    output has zero mean and unit variance for untruncated latents.
    """

    def __init__(self, mix: dict[int, float], w_dim: int, out_dim: int, generator: torch.Generator,
                 proj_dim: int = 12, hidden: int = 48, frequency: float = 0.8):
        super().__init__()
        self.layers = sorted(mix)
        norm = math.sqrt(sum(mix[i] ** 2 for i in self.layers))
        proj = torch.randn(len(self.layers), w_dim, proj_dim, generator=generator) / math.sqrt(w_dim)
        proj *= torch.tensor([mix[i] / norm for i in self.layers])[:, None, None]
        self.register_buffer("proj", proj)  # (L, w_dim, proj_dim)
        self.register_buffer("w1", torch.randn(proj_dim, hidden, generator=generator) * frequency / math.sqrt(proj_dim))
        self.register_buffer("b1", torch.rand(hidden, generator=generator) * 2 * math.pi)
        self.register_buffer("w2", torch.randn(hidden, out_dim, generator=generator) / math.sqrt(hidden))
        self.register_buffer("out_mean", torch.zeros(out_dim))
        self.register_buffer("out_std", torch.ones(out_dim))

    def raw(self, w_norm: torch.Tensor) -> torch.Tensor:
        """w_norm: (B, num_ws, w_dim) normalised W+, or (B, w_dim) for the same w on every layer
        -> (B, out_dim) un-standardised."""
        if w_norm.ndim == 2:
            x = w_norm @ self.proj.sum(0)
        else:
            x = torch.einsum("blc,lcp->bp", w_norm[:, self.layers], self.proj)
        return torch.sin(x @ self.w1 + self.b1) @ self.w2

    def calibrate(self, w_norm: torch.Tensor) -> None:
        """Standardise the outputs over `w_norm` ((B, w_dim) or (B, num_ws, w_dim) samples)."""
        y = self.raw(w_norm)
        self.out_mean.copy_(y.mean(0))
        self.out_std.copy_(y.std(0).clamp_min(1e-6))

    def forward(self, w_norm: torch.Tensor) -> torch.Tensor:
        return (self.raw(w_norm) - self.out_mean) / self.out_std
