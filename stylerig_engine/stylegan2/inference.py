"""Optional fast inference for the generator; the plain float32 path of `networks.py` is the reference.

Each option is independent, off by default, and measured by ``benchmarks/generator.py``:

* ``fp16``: float16 in the highest resolutions (the network's ``num_fp16_res``, or ``num_fp16_res`` here),
  NVIDIA's mixed precision; CUDA only (on CPU the blocks stay float32).
* ``tf32``: allow TF32 tensor-core math for float32 convolutions/matmuls (CUDA, Ampere or newer). With
  ``tf32=False`` the runner pins TF32 *off* during its calls (PyTorch allows it for cuDNN convolutions by
  default), so its float32 results are the reference.
* ``channels_last``: NHWC activations.
* ``compile``: ``torch.compile`` of the synthesis network.
* ``cuda_graph``: capture the batch-1 synthesis call in a CUDA graph per noise mode and replay it (CUDA
  only; other batch sizes and CPU tensors take the normal path).
* ``fused_modconv``: force the grouped-convolution (True) or the scale-conv-scale (False) form of the
  modulated convolution; None picks per block (`ops.auto_fused_modconv`).

`FastGenerator` wraps a `Generator` with these options and has the same ``mapping`` / ``synthesis`` /
``__call__`` API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .networks import Generator
from .ops import assert_shape


@dataclass
class InferenceOptions:
    fp16: bool = False                 # float16 in the highest resolutions (CUDA only)
    num_fp16_res: int | None = None    # how many resolutions run in float16; None = the network's (4 if 0)
    tf32: bool = False                 # allow TF32 on CUDA; False pins it off (reference float32)
    channels_last: bool = False        # NHWC activations
    compile: bool = False              # torch.compile the synthesis network
    compile_mode: str | None = None    # torch.compile mode ('max-autotune-no-cudagraphs', ...)
    cuda_graph: bool = False           # replay batch-1 synthesis from a CUDA graph (CUDA only)
    fused_modconv: bool | None = None  # None = per block, ops.auto_fused_modconv
    fast_ops: bool = True              # False = the step-by-step reference ops (slower, same function)


@contextlib.contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """Set PyTorch's TF32 switches for CUDA matmuls and cuDNN convolutions, restoring them afterwards."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def set_fp16_resolutions(G: Generator, num_fp16_res: int) -> None:
    """Mark the `num_fp16_res` highest resolutions (never 4x4) as float16 blocks, as NVIDIA's constructor does."""
    syn = G.synthesis
    fp16_resolution = max(2 ** (syn.img_resolution_log2 + 1 - num_fp16_res), 8)
    for res in syn.block_resolutions:
        getattr(syn, f"b{res}").use_fp16 = res >= fp16_resolution
    syn.num_fp16_res = num_fp16_res


class FastGenerator:
    """A Generator with `InferenceOptions` applied. The wrapped module's switches are changed in place."""

    def __init__(self, G: Generator, options: InferenceOptions | None = None):
        self.G = G
        self.options = options = options or InferenceOptions()
        syn = G.synthesis
        syn.fast = options.fast_ops
        if options.fp16:
            n = options.num_fp16_res if options.num_fp16_res is not None else (syn.num_fp16_res or 4)
            set_fp16_resolutions(G, n)
        syn.fp16 = options.fp16
        for res in syn.block_resolutions:
            getattr(syn, f"b{res}").channels_last = options.channels_last
        self._synthesis = syn.forward
        if options.compile:
            self._synthesis = torch.compile(syn.forward, mode=options.compile_mode, dynamic=False)
        self._graphs: dict[tuple, tuple[Any, torch.Tensor, torch.Tensor]] = {}

    # The Generator API.
    @property
    def num_ws(self) -> int:
        return self.G.num_ws

    @property
    def z_dim(self) -> int:
        return self.G.z_dim

    @property
    def w_dim(self) -> int:
        return self.G.w_dim

    @property
    def img_resolution(self) -> int:
        return self.G.img_resolution

    @property
    def w_avg(self) -> torch.Tensor:
        return self.G.w_avg

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0,
                cutoff: int | None = None) -> torch.Tensor:
        with tf32_mode(self.options.tf32):
            return self.G.mapping(z, c, psi=psi, cutoff=cutoff)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        assert_shape(ws, [None, self.G.num_ws, self.G.w_dim], "ws")
        fused = self.options.fused_modconv  # None: per block, ops.auto_fused_modconv
        use_graph = (self.options.cuda_graph and ws.is_cuda and ws.shape[0] == 1
                     and not (torch.is_grad_enabled() and ws.requires_grad))
        with tf32_mode(self.options.tf32):
            if use_graph:
                return self._replay(ws, noise_mode, fused)
            return self._synthesis(ws, noise_mode=noise_mode, fused_modconv=fused)

    def __call__(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0,
                 cutoff: int | None = None, noise_mode: str = "const") -> torch.Tensor:
        return self.synthesis(self.mapping(z, c, psi=psi, cutoff=cutoff), noise_mode=noise_mode)

    # CUDA graphs (batch 1).
    def _replay(self, ws: torch.Tensor, noise_mode: str, fused: bool | None) -> torch.Tensor:
        key = (tuple(ws.shape), ws.device, noise_mode, fused)
        if key not in self._graphs:
            self._graphs[key] = self._capture(ws, noise_mode, fused)
        graph, static_ws, static_out = self._graphs[key]
        static_ws.copy_(ws)
        graph.replay()
        return static_out.clone()

    def _capture(self, ws: torch.Tensor, noise_mode: str, fused: bool | None):
        static_ws = ws.detach().clone()
        with torch.no_grad():
            stream = torch.cuda.Stream(device=ws.device)
            stream.wait_stream(torch.cuda.current_stream(ws.device))
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm up cuDNN autotuning and allocator outside the capture
                    self._synthesis(static_ws, noise_mode=noise_mode, fused_modconv=fused)
            torch.cuda.current_stream(ws.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._synthesis(static_ws, noise_mode=noise_mode, fused_modconv=fused)
        return graph, static_ws, static_out


def count_flops(G: Generator) -> float:
    """Multiply-adds of one synthesis pass at batch 1 (convolutions only), for reporting throughput."""
    total = 0.0
    syn = G.synthesis
    for res in syn.block_resolutions:
        block = getattr(syn, f"b{res}")
        for name in ("conv0", "conv1"):
            layer = getattr(block, name, None)
            if layer is None:
                continue
            o, i, kh, kw = layer.weight.shape
            in_res = res // layer.up
            total += in_res * in_res * o * i * kh * kw
        o, i, _, _ = block.torgb.weight.shape
        total += res * res * o * i
    return total * 2 / 1e9
