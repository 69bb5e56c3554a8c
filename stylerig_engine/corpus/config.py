"""What a corpus is: its configuration, its shard layout and the per-sample seeds.

Everything that decides the content of sample i lives in `CorpusConfig.identity()`; two runs with the same
identity produce the same sample i, whatever the count, the shard a sample falls in, the batch size or the
number of processes. The count is not part of the identity: a corpus can be extended by rerunning with a
larger `--count` (only the shards whose sample range changes are regenerated).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FORMAT = "stylerig-corpus"
VERSION = 1
NUM_LANDMARKS = 68
# Fixed choices recorded in every manifest (changing one of them changes the identity of a corpus).
WS_DTYPE = "float32"
NOISE_MODE = "const"
SEED_SCHEME = "fmix32-v1"
MIXING_SCHEME = "segments-v1"
RESIZE_SCHEME = "box-or-bilinear-antialias-v1"
QUANTIZE_SCHEME = "nvidia-v1"  # uint8 = clamp(floor(x * 127.5 + 128), 0, 255)
MAX_COUNT = 1 << 32  # the per-sample seeds are distinct for every i below this


class CorpusError(RuntimeError):
    """Anything that stops a corpus from being written or read."""


class CorpusConfigError(CorpusError):
    """A corpus directory holds a corpus with another configuration (or a bad configuration was asked for)."""


class CorpusIntegrityError(CorpusError):
    """A shard or the manifest of a corpus is missing, truncated or fails its checksum."""


@dataclass(frozen=True)
class CorpusConfig:
    generator: str  # generator spec, e.g. "synthetic:128", "ffhq-256", "py:module:factory"
    count: int
    size: int = 256
    psi: float = 0.7
    mixing: int = 1  # up to this many latents per sample; 1 = no style mixing
    shard_size: int = 500
    seed: int = 0
    landmarks: str = "exact"

    def __post_init__(self) -> None:
        if not self.generator:
            raise CorpusConfigError("a generator spec is required")
        if not 1 <= self.count <= MAX_COUNT:
            raise CorpusConfigError(f"--count must be in [1, 2**32], got {self.count}")
        if self.size < 1:
            raise CorpusConfigError(f"--size must be positive, got {self.size}")
        if not 1 <= self.mixing <= 255:
            raise CorpusConfigError(f"--mixing must be in [1, 255] (1 = no style mixing), got {self.mixing}")
        if self.shard_size < 1:
            raise CorpusConfigError(f"--shard-size must be positive, got {self.shard_size}")
        if not 0 <= self.seed < (1 << 32):
            raise CorpusConfigError(f"--seed must be in [0, 2**32), got {self.seed}")
        if not self.landmarks:
            raise CorpusConfigError("--landmarks must name a detector (exact, fan, none, or a registered one)")
        object.__setattr__(self, "psi", float(self.psi))

    def identity(self) -> dict:
        """The settings that decide every sample's content (all but the count), as stored in the manifest."""
        d = asdict(self)
        del d["count"]
        d.update(ws_dtype=WS_DTYPE, noise_mode=NOISE_MODE, seed_scheme=SEED_SCHEME, mixing_scheme=MIXING_SCHEME,
                 resize=RESIZE_SCHEME, quantize=QUANTIZE_SCHEME, truncation_cutoff=None)
        return d

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)

    def shard_range(self, k: int) -> tuple[int, int]:
        if not 0 <= k < self.num_shards:
            raise IndexError(f"shard {k} out of range (corpus has {self.num_shards})")
        return k * self.shard_size, min((k + 1) * self.shard_size, self.count)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser on uint64 arrays holding uint32 values: a bijection of [0, 2**32)."""
    m = np.uint64(0xFFFFFFFF)
    h = h & m
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & m
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & m
    h ^= h >> np.uint64(16)
    return h


def sample_seeds(seed: int, start: int, stop: int) -> np.ndarray:
    """Per-sample seeds of samples [start, stop) of a corpus with base seed `seed`, as int64 in [0, 2**32).

    seed_i = fmix32(fmix32(i) XOR fmix32((seed + 0x9E3779B9) mod 2**32)). For a fixed base seed this is a
    bijection of i, so the seeds of a corpus (up to 2**32 samples) are all distinct; it depends on (seed, i)
    only, not on shards or processes. A seed_i is a seed in NVIDIA's sense: z = RandomState(seed_i).randn(z_dim).
    """
    i = np.arange(start, stop, dtype=np.uint64)
    key = _fmix32(np.array([(seed + 0x9E3779B9) & 0xFFFFFFFF], dtype=np.uint64))
    return _fmix32(_fmix32(i) ^ key).astype(np.int64)


def sample_latents(seeds: np.ndarray, z_dim: int, num_ws: int, mixing: int) -> tuple[np.ndarray, np.ndarray]:
    """The latents of samples with these seeds: (z (B, mixing, z_dim) float64, layer sources (B, num_ws) uint8).

    Per sample, with rs = numpy.random.RandomState(seed_i):
      1. z = rs.randn(mixing, z_dim). Row 0 is NVIDIA's z for seed_i (`stylerig generate --seeds seed_i`).
      2. Only if mixing > 1: k = rs.randint(1, mixing + 1) latents are used (uniform in 1..mixing, then capped
         at num_ws); the k - 1 crossover layers are rs.choice(range(1, num_ws), k - 1, replace=False), sorted.
         Layer l takes its style from latent j = the number of crossover layers <= l, so layers [0, c1) come from
         z_0, [c1, c2) from z_1, ... and [c_{k-1}, num_ws) from z_{k-1}.
    The layer sources (j per layer) are returned and stored in the corpus as `mixing`.
    """
    b = len(seeds)
    z = np.empty((b, mixing, z_dim), dtype=np.float64)
    src = np.zeros((b, num_ws), dtype=np.uint8)
    layers = np.arange(num_ws)
    rs = np.random.RandomState(0)
    for n, s in enumerate(seeds):
        rs.seed(int(s))  # the same stream as RandomState(s), without gathering OS entropy first (12x faster)
        z[n] = rs.randn(mixing, z_dim)
        if mixing > 1:
            k = min(int(rs.randint(1, mixing + 1)), num_ws)
            cuts = np.sort(rs.choice(np.arange(1, num_ws), size=k - 1, replace=False))
            src[n] = np.searchsorted(cuts, layers, side="right")
    return z, src
