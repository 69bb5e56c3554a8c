"""`stylerig weights ...` and `stylerig generate`."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """NVIDIA's seed syntax: comma-separated numbers and inclusive ranges, e.g. '0-7' or '1,3,5-6'."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise argparse.ArgumentTypeError(f"empty seed range {part!r}")
            seeds.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"bad seed {part!r}: use e.g. 0-7 or 1,3,5")
    if any(s >= 2**32 for s in seeds):
        raise argparse.ArgumentTypeError("seeds must be below 2**32")
    return seeds


def seed_to_z(seed: int, z_dim: int):
    """z for a seed exactly as NVIDIA's generate.py: np.random.RandomState(seed).randn(1, z_dim) (float64)."""
    import numpy as np

    return np.random.RandomState(seed).randn(1, z_dim)


def register(subparsers) -> None:
    weights = subparsers.add_parser("weights", help="list, fetch and convert StyleGAN2 generator weights")
    wsub = weights.add_subparsers(dest="weights_command", metavar="ACTION")

    p = wsub.add_parser("list", help="NVIDIA's pretrained networks and whether they are fetched")
    p.set_defaults(func=_cmd_list)

    p = wsub.add_parser("fetch", help="download a pretrained network (shows its license first)")
    p.add_argument("name", help="network name, see `stylerig weights list`")
    p.add_argument("--dir", type=Path, default=None, help="download folder (default: the stylerig cache)")
    p.add_argument("--accept-license", action="store_true",
                   help="accept the NVIDIA Source Code License-NC (non-commercial) without asking")
    p.add_argument("--base-url", default=None,
                   help="download from this base URL instead of NVIDIA's (also $STYLERIG_STYLEGAN2_BASE_URL)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fetch)

    p = wsub.add_parser("verify", help="check a fetched network's SHA-256 against its record")
    p.add_argument("name")
    p.set_defaults(func=_cmd_verify)

    p = wsub.add_parser("convert", help="convert a generator (pkl / pt / NAME / random:RES) to .safetensors")
    p.add_argument("src", help="generator spec: PATH (.pkl, .pt, .safetensors), NAME, or random:RES")
    p.add_argument("dst", type=Path, help="output .safetensors file")
    p.set_defaults(func=_cmd_convert)
    weights.set_defaults(func=lambda args: (weights.print_help(), 2)[1])

    p = subparsers.add_parser("generate", help="generate images and W+ latents from seeds with a StyleGAN2")
    p.add_argument("--generator", required=True, help="PATH (.pkl, .pt, .safetensors), NAME, or random:RES")
    p.add_argument("--seeds", type=parse_seeds, required=True, help="seeds, e.g. 0-7 or 1,3,5")
    p.add_argument("--psi", type=float, default=1.0, help="truncation psi (default 1 = none)")
    p.add_argument("--cutoff", type=int, default=None, help="truncate only the first N ws")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const",
                   help="noise inputs: the stored constants, fresh per seed (seeded), or none")
    p.add_argument("--out", type=Path, required=True, help="output folder: seedNNNN.png and seedNNNN.npy")
    p.add_argument("--batch", type=int, default=1, help="seeds per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--fp16", action="store_true", help="float16 in the highest resolutions (CUDA)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 math (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="NHWC activations")
    p.add_argument("--compile", action="store_true", help="torch.compile the synthesis network")
    p.add_argument("--cuda-graph", action="store_true", help="CUDA-graph replay for batch 1 (CUDA)")
    p.set_defaults(func=_cmd_generate)


def _cmd_list(args) -> int:
    from .weights import PRETRAINED, fetched_records

    records = fetched_records()
    print(f"{'NAME':<11} {'RES':>5}  {'STATUS':<9} SOURCE")
    for name, net in PRETRAINED.items():
        rec = records.get(name)
        fetched = rec is not None and Path(rec["path"]).exists()
        status = "fetched" if fetched else "-"
        where = rec["path"] if rec is not None and fetched else net.url()
        print(f"{name:<11} {net.resolution:>5}  {status:<9} {where}")
    print("\nLicense: NVIDIA Source Code License-NC (non-commercial use only). Also: random:RES, or any "
          ".pkl / .pt / .safetensors path.")
    return 0


def _cmd_fetch(args) -> int:
    from .weights import WeightsError, fetch

    try:
        path = fetch(args.name, dest_dir=args.dir, accept_license=args.accept_license, base_url=args.base_url,
                     progress=not args.no_progress)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _cmd_verify(args) -> int:
    from .weights import WeightsError, verify

    try:
        record = verify(args.name)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.name}: OK {record['sha256']} {record['path']}")
    return 0


def _cmd_convert(args) -> int:
    from .nvidia_pickle import UnsafePickleError, UnsupportedNetworkError
    from .weights import WeightsError, convert

    try:
        path = convert(args.src, args.dst)
    except (WeightsError, UnsafePickleError, UnsupportedNetworkError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _cmd_generate(args) -> int:
    import numpy as np
    import PIL.Image
    import torch

    from .. import fileio
    from .inference import FastGenerator, InferenceOptions
    from .nvidia_pickle import UnsafePickleError, UnsupportedNetworkError
    from .weights import WeightsError, load_generator

    device = _resolve_device(args.device)
    try:
        G = load_generator(args.generator, device=device)
    except (WeightsError, UnsafePickleError, UnsupportedNetworkError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    options = InferenceOptions(fp16=args.fp16, tf32=args.tf32, channels_last=args.channels_last,
                               compile=args.compile, cuda_graph=args.cuda_graph)
    from .networks import Generator

    # The fast-inference switches belong to our StyleGAN2; other generators (the synthetic world) run as they are.
    runner = FastGenerator(G, options) if isinstance(G, Generator) else G
    args.out.mkdir(parents=True, exist_ok=True)
    batch = max(1, args.batch) if args.noise_mode != "random" else 1
    seeds = args.seeds
    with torch.no_grad():
        for start in range(0, len(seeds), batch):
            chunk = seeds[start : start + batch]
            z = torch.from_numpy(np.concatenate([seed_to_z(s, G.z_dim) for s in chunk])).to(device)
            c = torch.zeros([len(chunk), G.c_dim], device=device) if G.c_dim else None
            ws = runner.mapping(z, c, psi=args.psi, cutoff=args.cutoff)
            if args.noise_mode == "random":
                torch.manual_seed(chunk[0])
            x = runner.synthesis(ws, noise_mode=args.noise_mode)
            img = (x.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()
            for i, seed in enumerate(chunk):
                pixels = img[i] if img.shape[-1] != 1 else img[i, :, :, 0]
                with fileio.atomic_write(args.out / f"seed{seed:04d}.png") as f:
                    PIL.Image.fromarray(pixels).save(f, format="PNG")
                with fileio.atomic_write(args.out / f"seed{seed:04d}.npy") as f:
                    np.save(f, ws[i].to(torch.float32).cpu().numpy())
                print(f"seed {seed}: {args.out / f'seed{seed:04d}.png'}")
    info = {
        "generator": str(args.generator), "seeds": seeds, "psi": args.psi, "cutoff": args.cutoff,
        "noise_mode": args.noise_mode, "num_ws": G.num_ws, "w_dim": G.w_dim, "img_resolution": G.img_resolution,
        "latents": "seedNNNN.npy: W+ float32 [num_ws, w_dim], after truncation",
    }
    with fileio.atomic_write(args.out / "generate.json", "w") as f:
        json.dump(info, f, indent=2)
    return 0
