"""DFR (latent -> face parameters) and RigNet (latent + target parameters -> edited latent).

Shapes are checked at module boundaries (ValueError, so the checks survive `python -O`): ws is
(B, num_ws, w_dim), parameters are (B, D) in a ParamLayout.
"""

from __future__ import annotations

import torch
from torch import nn

from ..params import CONTROL_MODES, ParamLayout
from ..stylegan2.ops import assert_shape

# Which W+ layers each control mode may change, for a 14-layer W+ (256² StyleGAN2): coarse layers carry
# pose, middle layers expression, fine layers colour and light. Scaled for other W+ sizes by default_layers.
DEFAULT_MODE_LAYERS_14: dict[str, tuple[int, ...]] = {
    "pose": (0, 1, 2, 3, 4),
    "expression": (3, 4, 5, 6, 7, 8),
    "illumination": (7, 8, 9, 10, 11, 12, 13),
    "identity": (0, 1, 2, 3, 4, 5),
    "albedo": (6, 7, 8, 9, 10, 11, 12, 13),
}


def default_layers(mode: str, num_ws: int) -> tuple[int, ...]:
    """The mode's default W+ layers, stretched to a W+ of num_ws layers (same coarse/middle/fine split)."""
    if mode not in DEFAULT_MODE_LAYERS_14:
        raise ValueError(f"unknown control mode {mode!r}; modes are {sorted(DEFAULT_MODE_LAYERS_14)}")
    return tuple(sorted({min(num_ws - 1, round(i * (num_ws - 1) / 13)) for i in DEFAULT_MODE_LAYERS_14[mode]}))


class LatentNormaliser(nn.Module):
    """(ws - w_avg) / w_std with statistics measured on the corpus, stored with the network."""

    w_avg: torch.Tensor  # buffers (declared for type checkers: nn.Module types attributes Tensor | Module)
    w_std: torch.Tensor

    def __init__(self, w_dim: int):
        super().__init__()
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.register_buffer("w_std", torch.ones(w_dim))

    def set_statistics(self, ws: torch.Tensor) -> None:
        flat = ws.reshape(-1, ws.shape[-1]).float()
        self.w_avg.copy_(flat.mean(0))
        self.w_std.copy_(flat.std(0).clamp_min(1e-6))

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return (ws - self.w_avg) / self.w_std


class PerLayerLinear(nn.Module):
    """L independent linear maps applied to (B, L, in) -> (B, L, out) in one batched matmul."""

    def __init__(self, layers: int, in_features: int, out_features: int, *, zero: bool = False):
        super().__init__()
        bound = in_features ** -0.5
        w = torch.zeros(layers, in_features, out_features) if zero else \
            torch.empty(layers, in_features, out_features).uniform_(-bound, bound)
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(layers, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bli,lio->blo", x, self.weight) + self.bias


class DFR(nn.Module):
    """Differentiable face reconstruction F: W+ -> p, a 3-layer ELU MLP on the flattened latent.

    Keyword args:
      layout: the parameter layout it predicts.
      num_ws: W+ layers.
      w_dim: latent width.
      hidden: width of the two hidden layers.
      layer_code: 0 for the paper's MLP on the whole flattened W+ (num_ws * w_dim inputs); k > 0 first
        encodes every W+ layer on its own (linear w_dim -> k, as RigNet's encoders) and feeds the
        num_ws * k codes to the MLP. That factorised first layer has 2.7x fewer weights for k = 64, runs
        faster and generalises better from the same samples (docs/rig.md has the measurements).
    The output layer predicts p in units of the prior (p = mean + std * y), so every entry starts at its
    prior mean and has the same scale.
    """

    prior_mean: torch.Tensor  # buffers
    prior_std: torch.Tensor

    def __init__(self, layout: ParamLayout, *, num_ws: int, w_dim: int, hidden: int = 256, layer_code: int = 0):
        super().__init__()
        if layer_code < 0:
            raise ValueError(f"layer_code must be >= 0, got {layer_code}")
        self.layout, self.num_ws, self.w_dim, self.layer_code = layout, num_ws, w_dim, layer_code
        self.normaliser = LatentNormaliser(w_dim)
        self.encoder = PerLayerLinear(num_ws, w_dim, layer_code) if layer_code else None
        inputs = num_ws * (layer_code or w_dim)
        head = nn.Linear(hidden, layout.dim)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(), head)
        self.register_buffer("prior_mean", torch.as_tensor(layout.prior_mean, dtype=torch.float32))
        self.register_buffer("prior_std", torch.as_tensor(layout.prior_std, dtype=torch.float32))

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        assert_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        x = self.normaliser(ws)
        if self.encoder is not None:
            x = self.encoder(x)
        y = self.net(x.flatten(1))
        return self.prior_mean + self.prior_std * y


class RigNet(nn.Module):
    """RigNet for one control mode: ŵ = w + d, with d nonzero only on the mode's W+ layers.

    Per controlled layer i: encoder l_i = E_i w_i (512 -> latent_dim, linear), decoder
    d_i = D_i([l_i, p]) (a 2-layer ELU MLP), where p is the target's controlled block, normalised by the prior.

    Keyword args:
      mode: control mode, a key of params.CONTROL_MODES.
      layout: the parameter layout (names the controlled blocks and their priors).
      num_ws: W+ layers.
      w_dim: latent width.
      layers: the W+ layers this mode may change (default: default_layers(mode, num_ws)).
      latent_dim: encoder output width (32 in the paper).
      hidden: decoder hidden width.
      shared_code: each layer's decoder also sees the codes of all the mode's layers (through `context`, added
        to its hidden pre-activation). In the paper each layer's offset depends on its own layer and the target
        only, but how far to move depends on the face's current state, which the mode's layers carry together
        (pose is mixed over layers 0-6). `context` starts at zero, so a paper RigNet's checkpoint starts such a
        network unchanged (fine-tuning).
    """

    block_index: torch.Tensor  # buffers
    layer_index: torch.Tensor
    prior_mean: torch.Tensor
    prior_std: torch.Tensor

    def __init__(self, mode: str, layout: ParamLayout, *, num_ws: int, w_dim: int,
                 layers: tuple[int, ...] | None = None, latent_dim: int = 32, hidden: int = 256,
                 shared_code: bool = False):
        super().__init__()
        if mode not in CONTROL_MODES:
            raise ValueError(f"unknown control mode {mode!r}; modes are {sorted(CONTROL_MODES)}")
        self.mode, self.layout, self.num_ws, self.w_dim = mode, layout, num_ws, w_dim
        self.layers = tuple(layers) if layers is not None else default_layers(mode, num_ws)
        if not self.layers or min(self.layers) < 0 or max(self.layers) >= num_ws:
            raise ValueError(f"layers {self.layers} must be non-empty and within 0..{num_ws - 1}")
        self.blocks = CONTROL_MODES[mode]
        self.register_buffer("block_index", torch.as_tensor(
            [i for b in self.blocks for i in range(layout.slice(b).start, layout.slice(b).stop)]))
        self.register_buffer("layer_index", torch.as_tensor(self.layers))
        n = len(self.layers)
        p_dim = int(self.block_index.numel())
        self.normaliser = LatentNormaliser(w_dim)
        self.encoder = PerLayerLinear(n, w_dim, latent_dim)
        self.decoder_hidden = PerLayerLinear(n, latent_dim + p_dim, hidden)
        self.decoder_out = PerLayerLinear(n, hidden, w_dim, zero=True)  # starts as the identity edit
        self.context = PerLayerLinear(n, n * latent_dim, hidden, zero=True) if shared_code else None
        self.register_buffer("prior_mean", torch.as_tensor(layout.prior_mean, dtype=torch.float32))
        self.register_buffer("prior_std", torch.as_tensor(layout.prior_std, dtype=torch.float32))

    def target(self, params: torch.Tensor) -> torch.Tensor:
        """(B, D) parameters -> (B, p_dim) the controlled block, normalised by the prior."""
        p = (params - self.prior_mean) / self.prior_std
        return p.index_select(1, self.block_index)

    def offsets(self, ws: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """(B, num_ws, w_dim), (B, D) -> d (B, num_ws, w_dim), zero outside self.layers."""
        assert_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        assert_shape(params, [ws.shape[0], self.layout.dim], "params")
        x = self.normaliser(ws).index_select(1, self.layer_index)  # (B, n, w_dim)
        code = self.encoder(x)
        target = self.target(params)[:, None, :].expand(-1, code.shape[1], -1)
        pre = self.decoder_hidden(torch.cat([code, target], -1))
        if self.context is not None:
            pre = pre + self.context(code.flatten(1)[:, None, :].expand(-1, code.shape[1], -1))
        h = nn.functional.elu(pre)
        d_layers = self.decoder_out(h) * self.normaliser.w_std  # back to latent units
        d = torch.zeros_like(ws)
        return d.index_copy(1, self.layer_index, d_layers)

    def forward(self, ws: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """ŵ = w + d for target parameters `params` (only the mode's blocks are read)."""
        return ws + self.offsets(ws, params)
