"""The stylerig engine wire protocol: length-prefixed frames, a JSON header, little-endian numpy payloads.

Shared by the engine server (`stylerig_server`) and the Blender add-on; stdlib + numpy only (never bpy, never
torch). docs/protocol.md is the specification; this module is its reference implementation.

A frame is

    prefix   20 bytes, little-endian: magic b"SRIG", u16 version, u16 flags (0), u32 header length,
             u64 payload length
    header   UTF-8 JSON object (no NaN/Infinity), `header length` bytes
    payload  `payload length` bytes: the arrays listed in header["arrays"], each at its own 8-byte aligned
             offset, raw C-order little-endian data

Every length is checked against the receiver's limits *before* anything is allocated.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"SRIG"
VERSION = 1
PREFIX = struct.Struct("<4sHHIQ")
PREFIX_SIZE = PREFIX.size  # 20
ALIGN = 8

DEFAULT_MAX_HEADER = 1 << 20  # 1 MiB
DEFAULT_MAX_PAYLOAD = 256 << 20  # 256 MiB
MAX_NDIM = 8
MAX_ARRAYS = 64
MAX_NAME = 64
SMALL_FRAME = 1 << 16  # frames up to this size are sent with one call; payloads above it are read into numpy

# dtype strings on the wire: numpy's `dtype.str`, always little-endian or byte-order free.
DTYPES = ("|u1", "|i1", "|b1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8")

# Error codes (docs/protocol.md, "Errors").
E_BAD_FRAME = "bad_frame"  # framing lost: bad magic, truncated; the connection is closed after the reply
E_TOO_LARGE = "too_large"  # declared lengths over the limits; closed after the reply (not read)
E_UNSUPPORTED_VERSION = "unsupported_version"  # closed after the reply
E_BAD_JSON = "bad_json"  # header is not a JSON object; the connection stays usable
E_BAD_ARRAYS = "bad_arrays"  # array descriptors inconsistent with the payload; stays usable
E_BAD_REQUEST = "bad_request"  # a field is missing, of the wrong type, out of range, NaN/inf, wrong shape
E_UNKNOWN_OP = "unknown_op"
E_UNAUTHORIZED = "unauthorized"  # no hello first, or the wrong token; closed after the reply
E_UNKNOWN_HANDLE = "unknown_handle"
E_NOT_AVAILABLE = "not_available"  # e.g. no DFR / RigNet loaded
E_BUSY = "busy"  # queue full; try again
E_SUPERSEDED = "superseded"  # a newer interactive render from the same client and slot replaced this one
E_CANCELLED = "cancelled"
E_TIMEOUT = "timeout"  # the request waited in the queue longer than its timeout
E_SHUTTING_DOWN = "shutting_down"
E_INTERNAL = "internal"

FATAL_CODES = frozenset({E_BAD_FRAME, E_TOO_LARGE, E_UNSUPPORTED_VERSION, E_UNAUTHORIZED})


class ProtocolError(Exception):
    """Something the peer sent cannot be accepted. `code` is one of the E_* codes; `fatal` means the byte
    stream can no longer be trusted (or must not be) and the connection has to be closed."""

    def __init__(self, code: str, message: str, *, fatal: bool | None = None, request_id: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = code in FATAL_CODES if fatal is None else fatal
        self.request_id = request_id


class ConnectionLost(ProtocolError):
    """The peer closed the connection (cleanly between frames, or in the middle of one)."""

    def __init__(self, message: str = "connection closed"):
        super().__init__(E_BAD_FRAME, message, fatal=True)


@dataclass
class Limits:
    max_header: int = DEFAULT_MAX_HEADER
    max_payload: int = DEFAULT_MAX_PAYLOAD


@dataclass
class Frame:
    header: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)


# ---- encoding -----------------------------------------------------------------------------------------
def _wire_array(a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.bool_:
        a = a.astype(np.bool_)
    elif a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not _LITTLE):
        a = a.astype(a.dtype.newbyteorder("<"))
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    if a.dtype.str not in DTYPES:
        raise TypeError(f"dtype {a.dtype} cannot go on the wire; use one of {DTYPES}")
    return a


_LITTLE = np.little_endian


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def encode_parts(header: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> list:
    """A frame as a list of buffers (prefix+header bytes, then array memoryviews and padding), so that large
    arrays are sent without being copied. `header` must not contain "arrays"; it is filled in here."""
    header = dict(header)
    descriptors = []
    buffers: list = []
    offset = 0
    for name, value in (arrays or {}).items():
        a = _wire_array(value)
        pad = (-offset) % ALIGN
        if pad:
            buffers.append(b"\0" * pad)
            offset += pad
        descriptors.append(
            {"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes}
        )
        if a.nbytes:
            buffers.append(memoryview(a.reshape(-1).view(np.uint8)))
        offset += a.nbytes
    if descriptors:
        header["arrays"] = descriptors
    else:
        header.pop("arrays", None)
    try:
        hbytes = json.dumps(header, separators=(",", ":"), allow_nan=False, default=_json_default).encode(
            "utf-8"
        )
    except ValueError as e:  # NaN / inf in the header
        raise ValueError(f"frame header is not valid JSON: {e}") from e
    prefix = PREFIX.pack(MAGIC, VERSION, 0, len(hbytes), offset)
    return [prefix + hbytes, *buffers]


def encode_frame(header: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> bytes:
    """The whole frame as one bytes object (convenient for tests and small frames)."""
    return b"".join(bytes(b) for b in encode_parts(header, arrays))


# ---- decoding -----------------------------------------------------------------------------------------
def parse_prefix(prefix: bytes, limits: Limits) -> tuple[int, int]:
    """20 prefix bytes -> (header length, payload length), checked against `limits` before any allocation."""
    if len(prefix) != PREFIX_SIZE:
        raise ProtocolError(E_BAD_FRAME, f"frame prefix must be {PREFIX_SIZE} bytes, got {len(prefix)}")
    magic, version, flags, hlen, plen = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(
            E_BAD_FRAME, f"bad frame magic {magic!r} (expected {MAGIC!r}); is this a stylerig engine client?"
        )
    if version != VERSION:
        raise ProtocolError(
            E_UNSUPPORTED_VERSION, f"protocol version {version} is not supported (this side speaks {VERSION})"
        )
    if flags != 0:
        raise ProtocolError(E_BAD_FRAME, f"unknown frame flags {flags:#x}")
    if hlen == 0:
        raise ProtocolError(E_BAD_FRAME, "empty frame header")
    if hlen > limits.max_header:
        raise ProtocolError(
            E_TOO_LARGE, f"frame header of {hlen} bytes exceeds the limit of {limits.max_header}"
        )
    if plen > limits.max_payload:
        raise ProtocolError(
            E_TOO_LARGE, f"frame payload of {plen} bytes exceeds the limit of {limits.max_payload}"
        )
    return hlen, plen


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a frame header")


def parse_header(data: bytes | bytearray | memoryview) -> dict:
    """Header bytes -> dict; E_BAD_JSON (not fatal: the frame boundaries are intact) if not a JSON object."""
    try:
        text = bytes(data).decode("utf-8")
        header = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(E_BAD_JSON, f"frame header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError(E_BAD_JSON, f"frame header must be a JSON object, got {type(header).__name__}")
    return header


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_arrays(header: dict, payload: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """The arrays described in header["arrays"], as views into `payload` (no copies)."""
    desc = header.get("arrays", [])
    rid = header.get("id")

    def bad(msg: str) -> ProtocolError:
        return ProtocolError(E_BAD_ARRAYS, msg, request_id=rid)

    if not isinstance(desc, list):
        raise bad("header 'arrays' must be a list")
    if len(desc) > MAX_ARRAYS:
        raise bad(f"at most {MAX_ARRAYS} arrays per frame")
    view = memoryview(payload).cast("B") if not isinstance(payload, memoryview) else payload.cast("B")
    out: dict[str, np.ndarray] = {}
    end = 0
    for i, d in enumerate(desc):
        if not isinstance(d, dict):
            raise bad(f"array descriptor {i} must be an object")
        name, dtype, shape, offset, nbytes = (
            d.get(k) for k in ("name", "dtype", "shape", "offset", "nbytes")
        )
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise bad(
                f"array descriptor {i}: 'name' must be a non-empty string of at most {MAX_NAME} characters"
            )
        if name in out:
            raise bad(f"array {name!r} appears twice")
        if dtype not in DTYPES:
            raise bad(f"array {name!r}: dtype {dtype!r} is not one of {DTYPES}")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_int(s) and s >= 0 for s in shape):
            raise bad(f"array {name!r}: 'shape' must be a list of at most {MAX_NDIM} non-negative integers")
        if not _int(offset) or not _int(nbytes) or offset < end or nbytes < 0:
            raise bad(
                f"array {name!r}: 'offset'/'nbytes' must be integers, in increasing, non-overlapping order"
            )
        itemsize = np.dtype(dtype).itemsize
        if math.prod(shape) * itemsize != nbytes:
            raise bad(
                f"array {name!r}: nbytes {nbytes} does not match shape {shape} x {itemsize}-byte {dtype}"
            )
        if offset + nbytes > len(view):
            raise bad(
                f"array {name!r}: bytes {offset}..{offset + nbytes} lie outside the {len(view)}-byte payload"
            )
        a = np.frombuffer(view[offset : offset + nbytes], dtype=np.dtype(dtype)).reshape(shape)
        out[name] = a
        end = offset + nbytes
    return out


def decode_frame(data: bytes | bytearray | memoryview, limits: Limits | None = None) -> Frame:
    """One complete frame (exactly) -> Frame. Raises ProtocolError."""
    limits = limits or Limits()
    view = memoryview(data).cast("B")
    hlen, plen = parse_prefix(bytes(view[:PREFIX_SIZE]), limits)
    if len(view) != PREFIX_SIZE + hlen + plen:
        raise ProtocolError(
            E_BAD_FRAME, f"frame is {len(view)} bytes, its prefix declares {PREFIX_SIZE + hlen + plen}"
        )
    header = parse_header(view[PREFIX_SIZE : PREFIX_SIZE + hlen])
    arrays = parse_arrays(header, view[PREFIX_SIZE + hlen :])
    return Frame(header, arrays)


class FrameDecoder:
    """Incremental decoder: `feed(bytes)` returns the complete frames so far.

    A fatal ProtocolError (bad magic, over-limit lengths) leaves the decoder failed: later feeds raise it.
    A non-fatal one (bad JSON, bad array descriptors) consumes exactly that frame; call `feed(b"")` to go on
    with the bytes after it.
    """

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._need: tuple[int, int] | None = None
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed is not None:
            raise self._failed
        self._buf += data
        frames: list[Frame] = []
        while True:
            if self._need is None:
                if len(self._buf) < PREFIX_SIZE:
                    return frames
                try:
                    self._need = parse_prefix(bytes(self._buf[:PREFIX_SIZE]), self.limits)
                except ProtocolError as e:
                    self._failed = e
                    raise
            hlen, plen = self._need
            total = PREFIX_SIZE + hlen + plen
            if len(self._buf) < total:
                return frames
            chunk = bytes(self._buf[:total])
            del self._buf[:total]
            self._need = None
            header = parse_header(chunk[PREFIX_SIZE : PREFIX_SIZE + hlen])
            frames.append(Frame(header, parse_arrays(header, chunk[PREFIX_SIZE + hlen :])))


# ---- sockets ------------------------------------------------------------------------------------------
def _read_exact(stream, n: int, what: str, *, at_boundary: bool = False):
    # payloads go into an uninitialised, aligned numpy buffer (no zero-filling of megabytes)
    buf = np.empty(n, np.uint8) if n >= SMALL_FRAME else bytearray(n)
    view = memoryview(buf).cast("B")
    got = 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            if at_boundary and got == 0:
                raise ConnectionLost("connection closed")
            raise ConnectionLost(f"connection closed in the middle of a frame ({what}: {got} of {n} bytes)")
        got += k
    return buf


def read_frame(stream, limits: Limits | None = None) -> Frame:
    """Read one frame from a binary stream with `readinto` (e.g. `sock.makefile("rb")`).

    Raises ConnectionLost at a clean end of stream, ProtocolError for a bad frame. After a non-fatal error
    (E_BAD_JSON, E_BAD_ARRAYS) the whole frame has been consumed and the stream is still in step.
    """
    limits = limits or Limits()
    prefix = _read_exact(stream, PREFIX_SIZE, "prefix", at_boundary=True)
    hlen, plen = parse_prefix(bytes(prefix), limits)
    hbytes = _read_exact(stream, hlen, "header")
    payload = _read_exact(stream, plen, "payload") if plen else bytearray()
    header = parse_header(hbytes)
    return Frame(header, parse_arrays(header, payload))


def send_parts(sock, parts: Iterable) -> int:
    """Send `encode_parts` buffers on a socket: small frames in one call, large arrays without copies."""
    parts = list(parts)
    total = sum(len(p) if not isinstance(p, memoryview) else p.nbytes for p in parts)
    if total <= SMALL_FRAME:
        sock.sendall(b"".join(parts))
    else:
        head = []
        for p in parts:
            if isinstance(p, memoryview) and p.nbytes > SMALL_FRAME:
                if head:
                    sock.sendall(b"".join(head))
                    head = []
                sock.sendall(p)
            else:
                head.append(p)
        if head:
            sock.sendall(b"".join(head))
    return total


def send_frame(sock, header: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> int:
    return send_parts(sock, encode_parts(header, arrays))


# ---- replies ------------------------------------------------------------------------------------------
def error_header(code: str, message: str, request_id: Any = None, **extra: Any) -> dict:
    return dict(id=request_id, ok=False, final=True, error={"code": code, "message": message}, **extra)


def is_final(header: Mapping[str, Any]) -> bool:
    return bool(header.get("final", True))
