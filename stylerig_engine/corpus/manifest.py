"""On-disk format of a corpus: safetensors shards and the JSON manifest.

A corpus directory holds
  manifest.json                   the corpus: configuration, generator, array layout, one record per shard
  shard-00000.safetensors, ...    samples [k * shard_size, min((k + 1) * shard_size, count)) of shard k
  SHA256SUMS                      `sha256sum -c SHA256SUMS` checks every shard (written when complete)
  manifest.rank<r>-of-<W>.json    progress of rank r while a multi-process run is under way (merged, then removed)

Every file is written to a temporary name beside it and renamed into place (fileio.atomic_write), so a
reader never sees a partial shard or manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from pathlib import Path

import numpy as np

from ..fileio import atomic_write
from .config import FORMAT, NUM_LANDMARKS, VERSION, WS_DTYPE, CorpusConfig, CorpusIntegrityError, shard_name

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
PART_RE = re.compile(r"^manifest\.rank(\d+)-of-(\d+)\.json$")
TEMP_RE = re.compile(r"^\.(shard-\d+\.safetensors|manifest.*\.json|SHA256SUMS)\..*\.tmp$")

# safetensors dtype names <-> numpy
ST_DTYPES = {"F32": np.float32, "F16": np.float16, "U8": np.uint8, "I64": np.int64}
NP_DTYPES = {np.dtype(v).name: k for k, v in ST_DTYPES.items()}
MAX_HEADER = 1 << 24
META_KEY = "stylerig"


def part_name(rank: int, world_size: int) -> str:
    return f"manifest.rank{rank}-of-{world_size}.json"


def array_layout(config: CorpusConfig, generator_info: dict) -> dict[str, dict]:
    """Per-sample dtype and shape of every array a shard stores (the leading sample axis is left out)."""
    num_ws, w_dim = generator_info["num_ws"], generator_info["w_dim"]
    layout = {
        "index": {"dtype": "int64", "shape": []},
        "seeds": {"dtype": "int64", "shape": []},
        "mixing": {"dtype": "uint8", "shape": [num_ws]},
        "ws": {"dtype": WS_DTYPE, "shape": [num_ws, w_dim]},
        "images": {"dtype": "uint8", "shape": [config.size, config.size, 3]},
    }
    if config.landmarks != "none":
        layout["landmarks"] = {"dtype": "float32", "shape": [NUM_LANDMARKS, 2]}
    return layout


def encode_shard(arrays: dict[str, np.ndarray], metadata: dict) -> bytes:
    """A shard's bytes. The metadata goes in one key, "stylerig" (JSON, sorted keys): safetensors stores its
    metadata map in arbitrary order, and a single key keeps the bytes, hence the checksums, reproducible."""
    from safetensors.numpy import save

    meta = {META_KEY: json.dumps(metadata, sort_keys=True)}
    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=meta)


def shard_record(k: int, start: int, stop: int, data: bytes) -> dict:
    return {"index": k, "file": shard_name(k), "start": start, "stop": stop, "count": stop - start,
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_header(path: str | os.PathLike) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, byte offset of the data) of a safetensors file, checked against its size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorpusIntegrityError(f"{path}: truncated safetensors file")
        n = struct.unpack("<Q", head)[0]
        if n > MAX_HEADER or 8 + n > size:
            raise CorpusIntegrityError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CorpusIntegrityError(f"{path}: unreadable safetensors header ({e})") from e
    metadata = header.pop("__metadata__", None) or {}
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + end != size:
        raise CorpusIntegrityError(f"{path}: {size} bytes, the header describes {8 + n + end}")
    return header, metadata, 8 + n


def memmap_shard(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a shard (read-only, nothing is read until it is indexed)."""
    header, _, base = read_header(path)
    out = {}
    for name, t in header.items():
        dtype = ST_DTYPES.get(t["dtype"])
        if dtype is None:
            raise CorpusIntegrityError(f"{path}: tensor {name} has unsupported dtype {t['dtype']}")
        begin, end = t["data_offsets"]
        shape = tuple(t["shape"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise CorpusIntegrityError(f"{path}: tensor {name} size does not match its shape")
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + begin, shape=shape)
    return out


def check_shard_layout(path: Path, header: dict, record: dict, layout: dict[str, dict]) -> None:
    """Raise unless the shard's tensors are exactly the corpus's arrays with `record['count']` samples."""
    if set(header) != set(layout):
        raise CorpusIntegrityError(f"{path}: holds arrays {sorted(header)}, expected {sorted(layout)}")
    for name, spec in layout.items():
        want = [record["count"], *spec["shape"]]
        got = header[name]
        if got["shape"] != want or got["dtype"] != NP_DTYPES[spec["dtype"]]:
            raise CorpusIntegrityError(
                f"{path}: array {name} is {got['dtype']} {got['shape']}, expected {NP_DTYPES[spec['dtype']]} {want}")


def manifest_doc(config: CorpusConfig, generator_info: dict, records: list[dict], *, complete: bool) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config.identity(),
        "count": config.count,
        "num_shards": config.num_shards,
        "generator": generator_info,
        "arrays": array_layout(config, generator_info),
        "complete": complete,
        "shards": sorted(records, key=lambda r: r["index"]),
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file(path: Path, data: bytes | str) -> None:
    """Atomically write `data` to `path`, readable as an ordinary new file would be (0666 less the umask)."""
    with atomic_write(path, "wb") as f:
        os.fchmod(f.fileno(), 0o666 & ~_umask())
        f.write(data.encode() if isinstance(data, str) else data)


def write_json(path: Path, doc: dict) -> None:
    write_file(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> dict | None:
    """The JSON document at `path`, None if there is none; CorpusIntegrityError if it is not one of ours."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise CorpusIntegrityError(f"{path}: not valid JSON ({e}); remove it or use another directory") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CorpusIntegrityError(f"{path}: not a stylerig corpus manifest")
    if doc.get("version") != VERSION:
        raise CorpusIntegrityError(f"{path}: corpus format version {doc.get('version')}, this stylerig reads {VERSION}")
    return doc


def write_sums(root: Path, records: list[dict]) -> None:
    write_file(root / SUMS, "".join(f"{r['sha256']}  {r['file']}\n" for r in sorted(records, key=lambda r: r["index"])))


def part_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if PART_RE.match(p.name))


def remove_temporaries(root: Path) -> int:
    """Remove the temporary files a killed writer left behind; returns how many."""
    n = 0
    for p in root.iterdir():
        if TEMP_RE.match(p.name):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n
