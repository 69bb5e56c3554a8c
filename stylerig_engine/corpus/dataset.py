"""Reading a corpus for training: memory-mapped shards, deterministic per-epoch shuffling, DDP/worker splits.

`Corpus(root)` opens a corpus (validates the manifest, every shard's presence, size and array layout; with
verify=True also every shard's SHA-256, which reads the whole corpus once) and gives random access to samples
through memory maps of the shards (an LRU of open shards; nothing is loaded until indexed, the OS page cache
does the caching).

`CorpusDataset` (map-style; use it with a DistributedSampler for a global shuffle) and `CorpusStream`
(IterableDataset: shard-order shuffle, then a shuffle inside each shard, which reads each shard's pages
sequentially) yield `CorpusSample(ws, image, landmarks, index)`; `Corpus.batch(indices, device)` reads a whole
batch at once (one fancy-indexed read per shard and array, one conversion, on the device), which is what a
training loop should use:
  ws         (num_ws, w_dim) float32
  image      (3, H, W) float32 in [-1, 1] (u / 127.5 - 1), or uint8 with image_format="uint8"
  landmarks  (68, 2) float32 pixels at the stored resolution; NaN when the corpus has none
  index      int64, the sample's index in the corpus
"""

from __future__ import annotations

import bisect
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..fileio import sha256_file
from . import manifest as mf
from .config import NUM_LANDMARKS, CorpusIntegrityError


class CorpusSample(NamedTuple):
    ws: torch.Tensor
    image: torch.Tensor
    landmarks: torch.Tensor
    index: torch.Tensor


class Corpus:
    """An opened, validated corpus directory with memory-mapped random access to its samples."""

    def __init__(self, root: str | os.PathLike, *, verify: bool = False, cache_shards: int = 4):
        self.root = Path(root)
        doc = mf.read_json(self.root / mf.MANIFEST)
        if doc is None:
            raise CorpusIntegrityError(f"{self.root}: no corpus here ({mf.MANIFEST} missing)")
        if not doc.get("complete"):
            done = len(doc.get("shards", []))
            raise CorpusIntegrityError(
                f"{self.root}: the corpus is incomplete ({done} of {doc.get('num_shards')} shards recorded); "
                "rerun the `stylerig corpus` command that wrote it to finish it")
        self.manifest = doc
        self.config = doc["config"]
        self.generator = doc["generator"]
        self.layout = doc["arrays"]
        self.count = int(doc["count"])
        self.shards = sorted(doc["shards"], key=lambda r: r["start"])
        self._starts = [r["start"] for r in self.shards]
        expect = 0
        for r in self.shards:
            if r["start"] != expect or r["stop"] - r["start"] != r["count"] or r["count"] < 1:
                raise CorpusIntegrityError(f"{self.root}: shard records do not tile [0, {self.count})")
            expect = r["stop"]
        if expect != self.count or len(self.shards) != doc["num_shards"]:
            raise CorpusIntegrityError(f"{self.root}: shard records cover {expect} of {self.count} samples")
        for r in self.shards:
            path = self.root / r["file"]
            if not path.exists():
                raise CorpusIntegrityError(f"{path}: missing; rerun the `stylerig corpus` command to regenerate it")
            if path.stat().st_size != r["bytes"]:
                raise CorpusIntegrityError(f"{path}: {path.stat().st_size} bytes, the manifest says {r['bytes']}")
            header, _, _ = mf.read_header(path)
            mf.check_shard_layout(path, header, r, self.layout)
            if verify and sha256_file(path) != r["sha256"]:
                raise CorpusIntegrityError(f"{path}: SHA-256 mismatch (corrupted); rerun the `stylerig corpus` "
                                           "command to regenerate it")
        self.has_landmarks = "landmarks" in self.layout
        self.resolution = int(self.config["size"])
        self.cache_shards = max(1, cache_shards)
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._starts_array = np.asarray(self._starts, np.int64)
        self._face_found: np.ndarray | None = None

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:  # memory maps are not sent to worker processes; each opens its own
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def shard_of(self, i: int) -> tuple[int, int]:
        """(shard position, row inside it) of sample i."""
        if not 0 <= i < self.count:
            raise IndexError(f"sample {i} out of range [0, {self.count})")
        k = bisect.bisect_right(self._starts, i) - 1
        return k, i - self._starts[k]

    def shard_arrays(self, k: int) -> dict[str, np.ndarray]:
        """Memory maps of shard k's arrays (kept in an LRU of `cache_shards` shards)."""
        arrays = self._cache.get(k)
        if arrays is None:
            arrays = mf.memmap_shard(self.root / self.shards[k]["file"])
            self._cache[k] = arrays
            while len(self._cache) > self.cache_shards:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(k)
        return arrays

    def read(self, i: int) -> dict[str, np.ndarray]:
        """Sample i as numpy arrays (copies): index, seeds, mixing, ws, images (H, W, 3) uint8, landmarks."""
        k, j = self.shard_of(i)
        return {name: np.array(a[j]) for name, a in self.shard_arrays(k).items()}

    def read_rows(self, indices, names=("index", "ws", "images", "landmarks")) -> dict[str, np.ndarray]:
        """Samples `indices` as stacked numpy arrays (in the order given): one fancy-indexed read per shard and
        array, rows sorted within a shard so the memory maps are read front to back."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            bad = idx[(idx < 0) | (idx >= self.count)][0]
            raise IndexError(f"sample {bad} out of range [0, {self.count})")
        shard = np.searchsorted(self._starts_array, idx, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for k in np.unique(shard):
            where = np.nonzero(shard == k)[0]
            rows = idx[where] - self._starts_array[k]
            order = np.argsort(rows, kind="stable")
            where, rows = where[order], rows[order]
            arrays = self.shard_arrays(int(k))
            for name in names:
                if name in arrays:
                    a = arrays[name]
                    if name not in out:
                        out[name] = np.empty((len(idx), *a.shape[1:]), a.dtype)
                    out[name][where] = a[rows]
        return out

    def batch(self, indices, device: torch.device | str = "cpu", image_format: str = "float") -> CorpusSample:
        """A batch of samples as stacked tensors on `device`: ws (B, num_ws, w_dim) float32, images (B, 3, H, W)
        (float in [-1, 1] or uint8), landmarks (B, 68, 2) (NaN where none), index (B,).

        Equal to stacking `sample(i)` for each i, but read in one pass per shard, sent to the device as uint8
        (a quarter of the bytes; pinned for CUDA) and converted there.
        """
        if image_format not in ("float", "uint8"):
            raise ValueError(f"image_format must be 'float' or 'uint8', got {image_format!r}")
        a = self.read_rows(indices)
        if not a:  # no indices: empty arrays of the right shapes
            a = {name: v[:0] for name, v in self.read_rows([0]).items()}
        n = len(a["index"])
        lm = a.get("landmarks")
        if lm is None:
            lm = np.full((n, NUM_LANDMARKS, 2), np.nan, np.float32)
        device = torch.device(device)
        pin = device.type == "cuda"

        def send(x: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(x)
            return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

        images = send(a["images"]).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW while still uint8
        if image_format == "float":
            images = images.float().div_(127.5).sub_(1.0)  # in place: the same values as u / 127.5 - 1
        return CorpusSample(send(a["ws"].astype(np.float32, copy=False)), images, send(lm), send(a["index"]))

    def face_found(self) -> np.ndarray:
        """(count,) bool: the sample has landmarks (its detector found a face). All False without landmarks.
        Reads only the landmarks arrays (544 bytes per sample), once."""
        if self._face_found is None:
            found = np.zeros(self.count, bool)
            if self.has_landmarks:
                for k, r in enumerate(self.shards):
                    lm = self.shard_arrays(k)["landmarks"]
                    found[r["start"]:r["stop"]] = np.isfinite(lm).reshape(len(lm), -1).all(1)
            self._face_found = found
        return self._face_found

    def sample(self, i: int, image_format: str = "float") -> CorpusSample:
        a = self.read(i)
        image = torch.from_numpy(a["images"]).permute(2, 0, 1).contiguous()
        if image_format == "float":
            image = image.float() / 127.5 - 1.0
        elif image_format != "uint8":
            raise ValueError(f"image_format must be 'float' or 'uint8', got {image_format!r}")
        lm = a["landmarks"] if "landmarks" in a else np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
        return CorpusSample(torch.from_numpy(a["ws"].astype(np.float32)), image, torch.from_numpy(lm),
                            torch.tensor(int(a["index"]), dtype=torch.int64))


class CorpusDataset(Dataset):
    """Map-style dataset over a corpus (random access through memory maps)."""

    def __init__(self, root: str | os.PathLike, *, image_format: str = "float", verify: bool = False,
                 cache_shards: int = 4):
        self.corpus = Corpus(root, verify=verify, cache_shards=cache_shards)
        self.image_format = image_format

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int) -> CorpusSample:
        return self.corpus.sample(int(i), self.image_format)


def epoch_order(corpus: Corpus, seed: int, epoch: int, shuffle: bool = True, *,
                faces_only: bool = False) -> np.ndarray:
    """All sample indices in the order of `epoch`: shards in a random order, each shard's samples permuted.

    Deterministic in (seed, epoch). Samples are independent draws of the generator, so shuffling within and
    across shards mixes as well as a global permutation does, while reading one shard at a time.
    faces_only leaves out the samples whose detector found no face (Corpus.face_found); the others keep their
    order, so a corpus where every face was found gives the same order either way.
    """
    if not shuffle:
        order = np.arange(corpus.count, dtype=np.int64)
    else:
        rng = np.random.default_rng([seed, epoch])
        parts = []
        for k in rng.permutation(len(corpus.shards)):
            r = corpus.shards[k]
            parts.append(r["start"] + rng.permutation(r["count"]))
        order = np.concatenate(parts).astype(np.int64)
    return order[corpus.face_found()[order]] if faces_only else order


def batch_indices(corpus: Corpus, seed: int, step: int, batch: int, *, faces_only: bool = True) -> np.ndarray:
    """The global batch of training step `step`: consecutive slices of the seeded per-epoch order (the last
    partial batch of an epoch dropped), leaving out samples without a face (faces_only).

    With every face found this is the order rig/train.py's batch_indices gives, so runs and resumes match.
    """
    if faces_only and not corpus.has_landmarks:
        raise ValueError(f"{corpus.root}: the corpus has no landmarks; build it with --landmarks auto (the "
                         "generator's own, else the offline detector of the landmarks extra)")
    usable = int(corpus.face_found().sum()) if faces_only else len(corpus)
    per_epoch = usable // batch
    if per_epoch == 0:
        why = f" with a face ({len(corpus) - usable} of {len(corpus)} have none)" if faces_only else ""
        raise ValueError(f"the corpus has {usable} samples{why}, fewer than one batch of {batch}")
    epoch, k = divmod(step, per_epoch)
    return epoch_order(corpus, seed, epoch, faces_only=faces_only)[k * batch:(k + 1) * batch]


class CorpusStream(IterableDataset):
    """Streams a corpus: deterministic per-epoch shuffle (`set_epoch`), split across DDP ranks and workers.

    The epoch order (epoch_order) is padded by wrapping around to a multiple of world_size (or cut with
    drop_last) so that every rank yields the same number of samples; rank r takes positions r, r + W, ...
    and DataLoader worker j of n takes every n-th of those, starting at j. rank and world_size default to
    torch.distributed's when it is initialised, else to 0 and 1.
    """

    def __init__(self, root: str | os.PathLike, *, seed: int = 0, shuffle: bool = True, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = False, image_format: str = "float",
                 verify: bool = False, cache_shards: int = 2):
        super().__init__()
        self.corpus = Corpus(root, verify=verify, cache_shards=cache_shards)
        if rank is None or world_size is None:
            dist = torch.distributed
            live = dist.is_available() and dist.is_initialized()
            rank = rank if rank is not None else (dist.get_rank() if live else 0)
            world_size = world_size if world_size is not None else (dist.get_world_size() if live else 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.drop_last, self.image_format = drop_last, image_format
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, w = self.corpus.count, self.world_size
        return n // w if self.drop_last else math.ceil(n / w)

    def rank_indices(self) -> np.ndarray:
        """The sample indices this rank yields this epoch, in order (all workers together)."""
        order = epoch_order(self.corpus, self.seed, self.epoch, self.shuffle)
        per_rank = len(self)
        total = per_rank * self.world_size
        if total > len(order):
            order = np.concatenate([order, np.resize(order, total - len(order))])
        return order[:total][self.rank::self.world_size]

    def __iter__(self) -> Iterator[CorpusSample]:
        indices = self.rank_indices()
        info = get_worker_info()
        if info is not None:
            indices = indices[info.id::info.num_workers]
        for i in indices:
            yield self.corpus.sample(int(i), self.image_format)
