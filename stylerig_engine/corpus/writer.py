"""Write a corpus of (w, I_w) pairs from a frozen generator: sharded, checksummed, resumable, multi-process.

Crash safety. Shards and manifests are written to a temporary file and renamed into place, a shard before
the manifest record that names it. A run killed at any moment leaves only finished shards, a manifest that
lists a subset of them, and maybe temporary files (removed on the next run). Rerunning the same command
verifies the listed shards (SHA-256, or only their size with verify=False), regenerates those missing,
truncated or corrupted, and renders the rest. A directory holding a corpus with another configuration is
refused (CorpusConfigError); a changed --count is allowed (extends or shortens the corpus).

Processes (torchrun). With WORLD_SIZE > 1 every rank renders shards k with k % world_size == rank and records
its progress in manifest.rank<r>-of-<W>.json after each shard; rank 0 merges them into manifest.json at the
end (gloo barriers). Sample i depends only on (configuration, i), so the merged corpus equals the
single-process one; resuming with another number of processes works.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..fileio import sha256_file
from ..pyspec import import_spec
from . import manifest as mf
from .config import (
    FORMAT,
    NOISE_MODE,
    VERSION,
    CorpusConfig,
    CorpusConfigError,
    CorpusError,
    CorpusIntegrityError,
    sample_latents,
    sample_seeds,
    shard_name,
)
from .landmarks import make_detector

GENERATOR_ATTRS = ("z_dim", "w_dim", "num_ws", "img_resolution", "mapping", "synthesis")


# ---------------------------------------------------------------------------------------------- generator


def resolve_generator(spec: str, device: torch.device | str = "cpu"):
    """The generator named by `spec`, on `device`, in eval mode.

    "py:package.module:name" imports `name` from the module (a generator, or a callable returning one; handy for
    custom generators and tests); every other spec goes to stylerig_engine.stylegan2.load_generator
    ("synthetic", "synthetic:128", "ffhq-256", a checkpoint path, ...).
    """
    if spec.startswith("py:"):
        try:
            obj = import_spec(spec)
        except ValueError as e:
            raise CorpusConfigError(f"generator {e}") from e
        gen = obj() if isinstance(obj, type) or not hasattr(obj, "synthesis") else obj
    else:
        load_generator = _find_loader(spec)
        params = inspect.signature(load_generator).parameters
        try:
            gen = load_generator(spec, device=device) if "device" in params else load_generator(spec)
        except (RuntimeError, ValueError, OSError, KeyError) as e:
            raise CorpusConfigError(f"cannot load generator {spec!r}: {e}") from e
    missing = [a for a in GENERATOR_ATTRS if not hasattr(gen, a)]
    if missing:
        raise CorpusConfigError(f"generator {spec!r} lacks {', '.join(missing)}")
    if isinstance(gen, torch.nn.Module):
        gen = gen.to(device).eval()
    return gen


def _find_loader(spec: str):
    for module in ("stylerig_engine.stylegan2", "stylerig_engine.stylegan2.weights"):
        with contextlib.suppress(ImportError):
            loader = getattr(importlib.import_module(module), "load_generator", None)
            if loader is not None:
                return loader
    raise CorpusError(f"generator spec {spec!r} needs stylerig_engine.stylegan2.load_generator, which is missing")


def describe_generator(gen) -> dict:
    """Shape of the generator and a SHA-256 of its weights (state_dict; None for a non-Module generator)."""
    info = {k: int(getattr(gen, k)) for k in ("z_dim", "w_dim", "num_ws", "img_resolution")}
    digest = None
    if isinstance(gen, torch.nn.Module):
        h = hashlib.sha256()
        for name, t in sorted(gen.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        digest = h.hexdigest()
    info["weights_sha256"] = digest
    return info


# ---------------------------------------------------------------------------------------------- samples


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, R, R) -> (B, C, size, size): a box filter (exact area average) when R is a multiple of size,
    else bilinear with antialiasing (torch, antialias=True); unchanged when size == R."""
    r = x.shape[-1]
    if size == r:
        return x
    if size < r and r % size == 0:
        return F.avg_pool2d(x, r // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def scale_landmarks(lm: torch.Tensor, from_size: int, to_size: int) -> torch.Tensor:
    """Landmarks in the pixel-centre convention (centre of the top-left pixel at 0) from one size to another."""
    if from_size == to_size:
        return lm
    return (lm + 0.5) * (to_size / from_size) - 0.5


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (B, 3, H, W) -> uint8 (B, H, W, 3), as NVIDIA's scripts save them."""
    y = x * 127.5
    return y.add_(128).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@torch.no_grad()
def synthesize_samples(gen, seeds: np.ndarray, *, psi: float, mixing: int, size: int, detector=None,
                       device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Render the samples with these per-sample seeds: the arrays of a shard (without `index`).

    ws = W+ after truncation (w_avg + psi (w - w_avg) on every layer, cutoff None) and style mixing (see
    config.sample_latents); images = synthesis(ws, noise_mode='const') resized to `size` and quantized;
    landmarks = detector(ws, full-resolution images) rescaled to `size`.
    """
    z, src = sample_latents(seeds, gen.z_dim, gen.num_ws, mixing)
    b, m = z.shape[:2]
    zt = torch.from_numpy(z.reshape(b * m, -1)).to(device=device, dtype=torch.float32)
    w_all = gen.mapping(zt, psi=psi, cutoff=None)
    w_all = w_all.reshape(b, m, gen.num_ws, gen.w_dim)
    if m == 1:
        ws = w_all[:, 0]
    else:
        index = torch.from_numpy(src.astype(np.int64)).to(w_all.device)[:, None, :, None]
        ws = torch.gather(w_all, 1, index.expand(b, 1, gen.num_ws, gen.w_dim))[:, 0]
    ws = ws.contiguous()
    images = gen.synthesis(ws, noise_mode=NOISE_MODE)
    out = {"seeds": seeds.astype(np.int64), "mixing": src, "ws": ws.float().cpu().numpy()}
    if detector is not None:
        lm = scale_landmarks(detector(ws, images).float(), images.shape[-1], size)
        out["landmarks"] = lm.cpu().numpy().astype(np.float32)
    out["images"] = quantize(resize_images(images.float(), size)).cpu().numpy()
    return out


@torch.no_grad()
def detect_landmarks(gen, ws: torch.Tensor, *, size: int, detector, batch: int = 16) -> torch.Tensor:
    """(B, 68, 2) landmarks of the latents' images in pixels at `size`, NaN where the detector finds no face, as a
    corpus stores them. The images are synthesised `batch` at a time, and only for a detector that reads them (the
    generator's exact landmarks do not)."""
    parts = []
    for part in ws.split(batch):
        images = gen.synthesis(part, noise_mode=NOISE_MODE) if getattr(detector, "reads_images", True) else None
        parts.append(scale_landmarks(detector(part, images).float(), gen.img_resolution, size))
    return torch.cat(parts)


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls) -> DistContext:
        """The process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR...), joined with gloo if need be."""
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local, False)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("gloo", timeout=timedelta(hours=48))
            return cls(dist.get_rank(), dist.get_world_size(), local, True)
        return cls()

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def default_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------- state


def _differences(have: dict, want: dict) -> list[str]:
    return [f"{k}: {have.get(k)!r} there, {want.get(k)!r} asked" for k in sorted(set(have) | set(want))
            if have.get(k) != want.get(k)]


def load_state(root: Path, config: CorpusConfig, generator_info: dict) -> dict[int, list[dict]]:
    """Shard records of manifest.json and the rank progress files that fit the current shard layout.

    Raises CorpusConfigError if the directory holds a corpus with another configuration or generator.
    """
    docs = [(root / mf.MANIFEST, mf.read_json(root / mf.MANIFEST))]
    docs += [(p, mf.read_json(p)) for p in mf.part_files(root)]
    want = config.identity()
    candidates: dict[int, list[dict]] = {}
    for _path, doc in docs:
        if doc is None:
            continue
        if diff := _differences(doc.get("config", {}), want):
            raise CorpusConfigError(
                f"{root} already holds a corpus with another configuration ({'; '.join(diff)}). Corpora are "
                f"never mixed: use another --out directory, or delete {root} to start over.")
        if diff := _differences(doc.get("generator", {}), generator_info):
            raise CorpusConfigError(
                f"{root} was written by another generator ({'; '.join(diff)}). Corpora are never mixed: use "
                f"another --out directory, or delete {root} to start over.")
        for rec in doc.get("shards", []):
            k = rec.get("index")
            if isinstance(k, int) and 0 <= k < config.num_shards and (rec.get("start"), rec.get("stop")) == \
                    config.shard_range(k):
                candidates.setdefault(k, []).append(rec)
    return candidates


def check_shard(path: Path, candidates: list[dict], verify: bool) -> tuple[dict | None, str]:
    """(the record the file on disk matches, "") or (None, why not)."""
    if not path.exists():
        return None, "missing"
    size = path.stat().st_size
    fits = [r for r in candidates if r.get("bytes") == size]
    if not fits:
        return None, "wrong size (truncated or corrupted)"
    if verify:
        digest = sha256_file(path)
        fits = [r for r in fits if r.get("sha256") == digest]
        if not fits:
            return None, "checksum mismatch (corrupted)"
    return fits[0], ""


# ---------------------------------------------------------------------------------------------- build


@dataclass
class BuildReport:
    root: Path
    count: int
    num_shards: int
    rank: int
    world_size: int
    shards_reused: int  # finished shards found and verified
    shards_repaired: int  # listed shards found missing or corrupted, regenerated
    shards_written: int  # by this rank, repaired ones included
    samples_written: int  # by this rank
    seconds: float  # this rank's rendering time
    no_face: int = 0  # samples written by this rank whose detector found no face (landmarks NaN)

    @property
    def samples_per_s(self) -> float:
        return self.samples_written / self.seconds if self.seconds > 0 else 0.0


def _log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def build_corpus(config: CorpusConfig, out: str | os.PathLike, *, generator=None, device=None, batch: int = 16,
                 verify: bool = True, progress: bool = True, log: Callable[[str], None] = _log,
                 after_shard: Callable[[int], None] | None = None) -> BuildReport:
    """Write (or resume, or repair, or extend) the corpus `config` describes in directory `out`.

    generator: an already loaded generator to use instead of resolving config.generator (its spec is still
    what the manifest records). Under torchrun (WORLD_SIZE > 1) each rank calls this with the same arguments.
    after_shard(k) is called after shard k is recorded (tests use it to simulate crashes).
    """
    if batch < 1:
        raise CorpusConfigError(f"--batch must be positive, got {batch}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    ctx = DistContext.from_env()
    try:
        return _build(config, root, ctx, generator, device, batch, verify, progress, log, after_shard)
    finally:
        ctx.close()


def _build(config, root, ctx, generator, device, batch, verify, progress, log, after_shard) -> BuildReport:
    device = torch.device(device) if device is not None else default_device(ctx.local_rank)
    gen = generator if generator is not None else resolve_generator(config.generator, device)
    if generator is not None and isinstance(gen, torch.nn.Module):
        gen = gen.to(device).eval()
    gen_info = describe_generator(gen)
    detector = make_detector(config.landmarks, gen, device)
    candidates = load_state(root, config, gen_info)  # same answer (or error) on every rank
    prefix = f"[rank {ctx.rank}] " if ctx.world_size > 1 else ""

    if ctx.rank == 0:
        if removed := mf.remove_temporaries(root):
            log(f"{prefix}removed {removed} temporary file(s) left by an interrupted run")
        if ctx.world_size > 1 and not (root / mf.MANIFEST).exists():
            mf.write_json(root / mf.MANIFEST, mf.manifest_doc(config, gen_info, [], complete=False))
    ctx.barrier()

    mine = [k for k in range(config.num_shards) if k % ctx.world_size == ctx.rank]
    records: dict[int, dict] = {}
    repaired = 0
    for k in mine:
        rec, why = check_shard(root / shard_name(k), candidates.get(k, []), verify)
        if rec is not None:
            records[k] = rec
        elif candidates.get(k):
            repaired += 1
            log(f"{prefix}{shard_name(k)}: {why}; regenerating it")
    reused = len(records)
    pending = [k for k in mine if k not in records]

    progress_path = root / (mf.MANIFEST if ctx.world_size == 1 else mf.part_name(ctx.rank, ctx.world_size))

    def save_progress() -> None:
        done = ctx.world_size == 1 and len(records) == config.num_shards
        mf.write_json(progress_path, mf.manifest_doc(config, gen_info, list(records.values()), complete=done))

    save_progress()
    total = sum(config.shard_range(k)[1] - config.shard_range(k)[0] for k in pending)
    desc = "corpus" if ctx.world_size == 1 else f"corpus (rank 0 of {ctx.world_size})"
    written = no_face = 0
    t0 = time.perf_counter()
    with tqdm(total=total, desc=desc, unit=" samples", disable=not progress or ctx.rank != 0 or total == 0,
              dynamic_ncols=True, smoothing=0.1) as bar:
        for k in pending:
            start, stop = config.shard_range(k)
            seeds = sample_seeds(config.seed, start, stop)
            arrays: dict[str, np.ndarray] = {"index": np.arange(start, stop, dtype=np.int64)}
            for b0 in range(0, stop - start, batch):
                part = synthesize_samples(gen, seeds[b0:b0 + batch], psi=config.psi, mixing=config.mixing,
                                          size=config.size, detector=detector, device=device)
                for name, a in part.items():
                    if name not in arrays:
                        arrays[name] = np.empty((stop - start, *a.shape[1:]), a.dtype)
                    arrays[name][b0:b0 + len(a)] = a
                bar.update(len(part["seeds"]))
            if "landmarks" in arrays:
                no_face += int(np.isnan(arrays["landmarks"]).reshape(stop - start, -1).any(1).sum())
            meta = {"format": FORMAT, "version": VERSION, "shard": k, "start": start, "stop": stop,
                    "config": config.identity()}
            data = mf.encode_shard(arrays, meta)
            mf.write_file(root / shard_name(k), data)
            records[k] = mf.shard_record(k, start, stop, data)
            save_progress()
            written += stop - start
            if after_shard is not None:
                after_shard(k)
    seconds = time.perf_counter() - t0
    if written and (summary := getattr(detector, "summary", None)):
        log(f"{prefix}{summary()}")
    if no_face:
        log(f"{prefix}{no_face} of {written} samples: no face found; their landmarks are NaN and training "
            "leaves them out")

    ctx.barrier()
    if ctx.rank == 0:
        _finalize(root, config, gen_info, ctx.world_size, records)
    ctx.barrier()
    return BuildReport(root, config.count, config.num_shards, ctx.rank, ctx.world_size, reused, repaired,
                       len(pending), written, seconds, no_face)


def _finalize(root: Path, config: CorpusConfig, gen_info: dict, world_size: int, records: dict[int, dict]) -> None:
    """Rank 0, all ranks done: write the complete manifest and SHA256SUMS, remove the progress files."""
    merged = dict(records)
    if world_size > 1:
        for r in range(world_size):
            doc = mf.read_json(root / mf.part_name(r, world_size))
            for rec in (doc or {}).get("shards", []):
                merged[rec["index"]] = rec
    missing = [k for k in range(config.num_shards) if k not in merged]
    if missing:
        raise CorpusIntegrityError(f"{root}: shards {missing[:10]} were not written; rerun the same command")
    recs = [merged[k] for k in range(config.num_shards)]
    mf.write_json(root / mf.MANIFEST, mf.manifest_doc(config, gen_info, recs, complete=True))
    mf.write_sums(root, recs)
    for p in mf.part_files(root):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
