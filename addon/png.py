"""Minimal PNG writing and checking (stdlib zlib + numpy): the batch renderer's frames.

Frames are written atomically (a temporary file renamed into place) with a tEXt chunk naming what they show, so
that a resumed batch can tell a complete frame of the same rig state (kept) from a truncated file or a frame of
an older state (rendered again).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, text: dict[str, str] | None = None, level: int = 6) -> bytes:
    """(H, W, 3|4) uint8, row 0 at the top -> PNG bytes (8-bit RGB/RGBA)."""
    a = np.ascontiguousarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"PNG frames must be (H, W, 3|4) uint8, got {a.shape} {a.dtype}")
    h, w, c = a.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), a.reshape(h, w * c)], axis=1)  # filter 0 per row
    out = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0))]
    for k, v in (text or {}).items():
        out.append(_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1")))
    out.append(_chunk(b"IDAT", zlib.compress(raw.tobytes(), level)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def write_png(path: str | os.PathLike, image: np.ndarray, text: dict[str, str] | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(encode_png(image, text))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def png_info(path: str | os.PathLike) -> dict | None:
    """{"width", "height", "text": {...}} of a complete, intact PNG (every chunk's CRC checked, IEND present), else
    None. Pixels are not decompressed."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(SIGNATURE):
        return None
    pos, info = len(SIGNATURE), None
    text: dict[str, str] = {}
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            return None
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
            info = {"width": w, "height": h, "text": text}
        elif kind == b"tEXt" and b"\0" in body:
            k, v = body.split(b"\0", 1)
            text[k.decode("latin-1")] = v.decode("latin-1")
        elif kind == b"IEND":
            return info if pos + 12 == len(data) else None
        pos += 12 + length
    return None


def decode_png(path: str | os.PathLike) -> np.ndarray:
    """The pixels of a PNG written by encode_png (8-bit RGB/RGBA, filter 0 rows) -> (H, W, C) uint8."""
    data = Path(path).read_bytes()
    pos, idat, shape = len(SIGNATURE), b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            if depth != 8 or colour not in (2, 6):
                raise ValueError("only 8-bit RGB/RGBA PNGs are supported")
            shape = (h, w, 4 if colour == 6 else 3)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if shape is None:
        raise ValueError(f"{path}: no IHDR")
    h, w, c = shape
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * c)
    if raw[:, 0].any():
        raise ValueError("only unfiltered PNG rows are supported")
    return raw[:, 1:].reshape(h, w, c).copy()
