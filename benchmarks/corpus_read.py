"""Reading training batches from a corpus: per sample (Corpus.sample, stacked) against Corpus.batch.

Writes a corpus of COUNT samples at SIZE² from a cheap stand-in generator (or uses --corpus DIR), then times
reading random training batches (batch_indices order) both ways, to the device, after one warm-up pass so that
the shards are in the page cache (the steady state of training: a 200k corpus at 256² is 39 GB).

    .venv/bin/python benchmarks/corpus_read.py --size 256 --batch 32 256 --device cpu
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn


class StandIn(nn.Module):
    """A generator with StyleGAN2's interface and shapes (14 x 512 W+) whose images cost almost nothing."""

    z_dim = w_dim = 512
    num_ws = 14

    def __init__(self, resolution: int):
        super().__init__()
        self.img_resolution = resolution
        g = torch.Generator().manual_seed(0)
        self.register_buffer("colour", torch.randn(self.w_dim, 3 * 8 * 8, generator=g) / math.sqrt(self.w_dim))
        self.register_buffer("w_avg", torch.zeros(self.w_dim))

    def mapping(self, z, psi=1.0, cutoff=None):
        return (psi * z.float())[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws, noise_mode="const"):
        coarse = (ws[:, 0] @ self.colour).reshape(-1, 3, 8, 8)
        return torch.tanh(nn.functional.interpolate(coarse, size=self.img_resolution, mode="bilinear"))

    def landmarks(self, ws):
        return torch.full((ws.shape[0], 68, 2), self.img_resolution / 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=None, help="an existing corpus (default: write one to a temporary dir)")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--batches", type=int, default=20, help="batches timed per variant")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", default=None, help="write the corpus here and keep it (reuse it with --corpus)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from stylerig_engine.corpus import Corpus, CorpusConfig, batch_indices, build_corpus

    tmp = None
    root = args.corpus
    if root is None:
        if args.keep:
            root = args.keep
        else:
            tmp = tempfile.TemporaryDirectory()
            root = tmp.name
        t0 = time.perf_counter()
        build_corpus(CorpusConfig(generator="standin", count=args.count, size=args.size, landmarks="exact"), root,
                     generator=StandIn(args.size), device="cpu", batch=64, progress=False, log=lambda m: None)
        print(f"wrote {args.count} samples at {args.size}² in {time.perf_counter() - t0:.1f} s")
    corpus = Corpus(root, cache_shards=8)
    device = torch.device(args.device)

    def per_sample(idx):
        s = [corpus.sample(int(i)) for i in idx]
        return (torch.stack([x.ws for x in s]).to(device), torch.stack([x.image for x in s]).to(device),
                torch.stack([x.landmarks for x in s]).to(device))

    def batched(idx):
        return corpus.batch(idx, device)

    for batch in args.batch:
        steps = list(range(args.batches))
        for name, fn in (("per sample", per_sample), ("Corpus.batch", batched)):
            for s in steps[:2]:
                fn(batch_indices(corpus, 0, s, batch))  # warm-up
            times, cpu = [], []
            for s in steps:
                idx = batch_indices(corpus, 0, s, batch)
                t0, c0 = time.perf_counter(), time.process_time()
                out = fn(idx)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                del out
            ms, cpu_ms = 1000 * float(np.median(times)), 1000 * float(np.median(cpu))
            print(f"{args.size}² batch {batch:4d} {name:<13} {ms:8.2f} ms/batch wall "
                  f"({batch / ms * 1000:7.0f} samples/s), "
                  f"{cpu_ms:8.2f} ms CPU ({batch / cpu_ms * 1000:7.0f} samples/s)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
