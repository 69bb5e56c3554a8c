"""A tiny deterministic stand-in generator for the corpus tests (StyleGAN's interface, 32x32 images).

Importable by the corpus CLI in a subprocess as `py:test_corpus_standin:tiny` (with tests/ on PYTHONPATH);
STANDIN_DELAY (seconds per synthesis call) slows it down so that a run can be killed mid-way.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn


class TinyGenerator(nn.Module):
    z_dim, w_dim, num_ws, img_resolution = 12, 8, 6, 32

    def __init__(self, seed: int = 0, delay: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("map_weight", torch.randn(self.z_dim, self.w_dim, generator=g) / math.sqrt(self.z_dim))
        self.register_buffer("map_bias", 0.3 * torch.randn(self.w_dim, generator=g))
        self.register_buffer("colour", torch.randn(self.num_ws * self.w_dim, 3 * 4 * 4, generator=g) * 0.15)
        self.register_buffer("freq", torch.randn(self.w_dim, 2, generator=g))
        self.register_buffer("w_avg", torch.zeros(self.w_dim))
        with torch.no_grad():
            self.w_avg.copy_(self._map(torch.randn(2000, self.z_dim, generator=g)).mean(0))
        self.delay = delay

    def _map(self, z: torch.Tensor) -> torch.Tensor:
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        return 2.0 * torch.tanh(x @ self.map_weight + self.map_bias)

    def mapping(self, z: torch.Tensor, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        w = self._map(z.float())
        ws = w[:, None, :].repeat(1, self.num_ws, 1)
        trunc = self.w_avg + psi * (ws - self.w_avg)
        if cutoff is None:
            return trunc
        ws[:, :cutoff] = trunc[:, :cutoff]
        return ws

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        assert ws.shape[1:] == (self.num_ws, self.w_dim)
        if self.delay:
            time.sleep(self.delay)
        b, r = ws.shape[0], self.img_resolution
        coarse = (ws.reshape(b, -1) @ self.colour).reshape(b, 3, 4, 4)
        img = F.interpolate(coarse, size=(r, r), mode="bilinear", align_corners=False)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, r), torch.linspace(-1, 1, r), indexing="ij")
        f = ws[:, -1] @ self.freq  # (B, 2): fine layer -> stripes
        stripes = torch.sin(3 * (f[:, 0, None, None] * xx + f[:, 1, None, None] * yy))
        return torch.tanh(img + 0.3 * stripes[:, None])

    def landmarks(self, ws: torch.Tensor) -> torch.Tensor:
        """68 points on an ellipse whose centre and radii follow the coarse layers; generator pixels."""
        r = self.img_resolution
        centre = (r - 1) / 2 + 4 * torch.tanh(ws[:, 0, :2])  # (B, 2)
        radii = r / 4 + 2 * torch.sigmoid(ws[:, 1, 2:4])
        t = torch.linspace(0, 2 * math.pi, 69)[:68]
        unit = torch.stack([torch.cos(t), torch.sin(t)], -1)  # (68, 2)
        return centre[:, None, :] + radii[:, None, :] * unit


class TinyNoLandmarks(TinyGenerator):
    landmarks = None


def tiny() -> TinyGenerator:
    return TinyGenerator(delay=float(os.environ.get("STANDIN_DELAY", "0")))


def tiny_no_landmarks() -> TinyNoLandmarks:
    return TinyNoLandmarks()


def test_standin_is_deterministic_and_in_range():
    a, b = TinyGenerator(), TinyGenerator()
    z = torch.randn(3, a.z_dim, generator=torch.Generator().manual_seed(1))
    ws = a.mapping(z, psi=0.7)
    assert ws.shape == (3, a.num_ws, a.w_dim)
    assert torch.equal(ws, b.mapping(z, psi=0.7))
    img = a.synthesis(ws)
    assert img.shape == (3, 3, 32, 32) and img.abs().max() <= 1
    assert torch.equal(img, b.synthesis(ws))
    lm = a.landmarks(ws)
    assert lm.shape == (3, 68, 2) and (lm > 0).all() and (lm < 31).all()
    # psi = 0 gives w_avg everywhere
    assert torch.allclose(a.mapping(z, psi=0.0), a.w_avg.expand(3, a.num_ws, a.w_dim))
