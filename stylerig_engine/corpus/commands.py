"""`stylerig corpus`: write the (w, I_w) training corpus; `stylerig corpus-check`: validate one."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "corpus",
        help="sample a training corpus of (W+, image, landmarks) from a frozen generator",
        description="Sample latents, map them to W+ with truncation (and optional style mixing), render, resize "
                    "and store them in checksummed safetensors shards with a JSON manifest (docs/corpus.md). "
                    "Rerun the same command to resume an interrupted run or repair a corrupted shard; run it "
                    "under torchrun to split the shards across processes.")
    p.add_argument("--generator", required=True, help="generator spec: synthetic, synthetic:128, ffhq-256, a "
                   "checkpoint, or py:package.module:name")
    p.add_argument("--count", type=int, required=True, help="number of samples (StyleRig uses 200000)")
    p.add_argument("--size", type=int, default=256, help="stored image resolution (default 256)")
    p.add_argument("--psi", type=float, default=0.7, help="truncation psi (default 0.7)")
    p.add_argument("--mixing", type=int, default=1, help="style mixing of up to this many latents per sample "
                   "(default 1: none)")
    p.add_argument("--shard-size", type=int, default=500, help="samples per shard (default 500)")
    p.add_argument("--seed", type=int, default=0, help="base seed; sample i's seed derives from (seed, i)")
    p.add_argument("--out", required=True, help="corpus directory")
    # Not argparse choices: detectors may be registered at run time, and listing them would import torch here.
    p.add_argument("--landmarks", default="auto",
                   help="68-point landmarks: exact (the generator's own), mediapipe (offline; the landmarks extra), "
                        "fan (face-alignment), dlib (opt-in), none, or a registered detector; auto = exact when the "
                        "generator has them, else mediapipe, else an error naming the extra to install")
    p.add_argument("--batch", type=int, default=16, help="samples per generator call (default 16)")
    p.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument("--no-verify", action="store_true", help="on resume, trust finished shards of the right size "
                   "instead of checking their SHA-256")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

    c = subparsers.add_parser("corpus-check", help="validate a corpus (manifest, shards, SHA-256)",
                              description="Open a corpus as the training loader does and check every shard's SHA-256.")
    c.add_argument("dir", help="corpus directory")
    c.add_argument("--fast", action="store_true", help="check sizes and layout only, not checksums")
    c.set_defaults(func=run_check)


def run(args: argparse.Namespace) -> int:
    import torch

    from .config import CorpusConfig, CorpusError
    from .landmarks import resolve_landmarks
    from .writer import build_corpus, default_device, resolve_generator

    try:
        device = torch.device(args.device) if args.device else default_device(int(os.environ.get("LOCAL_RANK", "0")))
        generator = resolve_generator(args.generator, device)
        landmarks = resolve_landmarks(args.landmarks, generator)
        config = CorpusConfig(generator=args.generator, count=args.count, size=args.size, psi=args.psi,
                              mixing=args.mixing, shard_size=args.shard_size, seed=args.seed, landmarks=landmarks)
        report = build_corpus(config, args.out, generator=generator, device=device, batch=args.batch,
                              verify=not args.no_verify, progress=not args.quiet)
    except CorpusError as e:
        print(f"stylerig corpus: error: {e}", file=sys.stderr)
        return 2
    if report.rank == 0:
        rate = f", {report.samples_per_s:.1f} samples/s" if report.samples_written else ""
        who = "" if report.world_size == 1 else f" (rank 0 of {report.world_size}: figures are this rank's)"
        faces = f"; landmarks {landmarks}, no face in {report.no_face}" if landmarks not in ("none", "exact") else ""
        print(f"{report.root}: {report.count} samples in {report.num_shards} shards; wrote {report.shards_written} "
              f"shards ({report.samples_written} samples in {report.seconds:.1f} s{rate}), reused "
              f"{report.shards_reused}, repaired {report.shards_repaired}{faces}{who}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from .config import CorpusError
    from .dataset import Corpus

    try:
        corpus = Corpus(args.dir, verify=not args.fast)
    except CorpusError as e:
        print(f"stylerig corpus-check: {e}", file=sys.stderr)
        return 1
    what = "sizes and layout" if args.fast else "SHA-256"
    print(f"{args.dir}: ok ({corpus.count} samples, {len(corpus.shards)} shards, {corpus.resolution}px, "
          f"generator {corpus.config['generator']}, {what} checked)")
    return 0
