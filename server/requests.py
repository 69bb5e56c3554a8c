"""Validation of decoded request frames: pure functions, no engine, no sockets (fuzz-tested).

`validate(header, arrays, spec)` returns a normalised Request or raises ProtocolError with a clear message
(code bad_request / unknown_op) that names the field. Values that can only be checked against engine state
(whether a latent handle exists, whether a RigNet for a mode is loaded) are checked when the request runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stylerig_addon import protocol as P

from stylerig_engine.engine import COLORSPACES, FORMATS, MAX_SIZE, ORIGINS
from stylerig_engine.params import CONTROL_MODES

FLOAT_DTYPES = ("<f2", "<f4", "<f8")

OPS = (
    "hello",
    "ping",
    "info",
    "stats",
    "geometry",
    "new_face",
    "upload_latent",
    "get_latent",
    "release",
    "fit",
    "render",
    "batch_render",
    "cancel",
    "shutdown",
)
# Run on the device worker thread: everything that touches torch tensors (the engine's rule).
WORKER_OPS = ("new_face", "upload_latent", "get_latent", "fit", "render", "batch_render")


@dataclass(frozen=True)
class Spec:
    """What validation needs to know about the engine."""

    num_ws: int
    w_dim: int
    dim: int  # parameter vector length D
    resolution: int
    max_size: int = MAX_SIZE
    max_frames: int = 100_000
    max_seeds: int = 1024
    max_handles: int = 1024
    max_timeout: float = 3600.0


@dataclass
class Request:
    op: str
    id: Any
    fields: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return int(self.fields.get("frames", 1))


class _Bad(Exception):
    pass


def request_id(header: Any) -> Any:
    """The request id if it is a valid one (int within ±2**53 or a string of at most 128 characters)."""
    if not isinstance(header, dict):
        return None
    rid = header.get("id")
    if isinstance(rid, bool):
        return None
    if isinstance(rid, int) and abs(rid) <= 2**53:
        return rid
    if isinstance(rid, str) and len(rid) <= 128:
        return rid
    return None


def validate(header: dict, arrays: dict[str, np.ndarray], spec: Spec) -> Request:
    rid = request_id(header)
    _check_alignment(header, rid)
    try:
        if "id" in header and header["id"] is not None and rid is None:
            raise _Bad("'id' must be an integer (|id| <= 2**53) or a string of at most 128 characters")
        op = header.get("op")
        if not isinstance(op, str):
            raise _Bad("'op' (the operation name, a string) is missing")
        if op not in OPS:
            raise P.ProtocolError(
                P.E_UNKNOWN_OP, f"unknown operation {op[:64]!r}; operations are {list(OPS)}", request_id=rid
            )
        fields, out_arrays = _VALIDATORS[op](header, dict(arrays), spec)
        return Request(op, rid, fields, out_arrays)
    except _Bad as e:
        raise P.ProtocolError(P.E_BAD_REQUEST, str(e), request_id=rid) from None


def _check_alignment(header: dict, rid: Any) -> None:
    """Each array must start on an 8-byte boundary of the payload (docs/protocol.md, "Arrays"): the decoder
    checks the descriptors against the payload, this checks the alignment they promise."""
    for d in header.get("arrays") or ():
        offset = d.get("offset") if isinstance(d, dict) else None
        if isinstance(offset, int) and offset % P.ALIGN:
            raise P.ProtocolError(
                P.E_BAD_ARRAYS,
                f"array {d.get('name')!r}: offset {offset} is not a multiple of {P.ALIGN} "
                "(each array starts on an 8-byte boundary)",
                request_id=rid,
            )


# ---- field helpers ----------------------------------------------------------------------------------
def _opt(h: dict, key: str, default: Any = None) -> Any:
    v = h.get(key, default)
    return default if v is None else v


def _int(h: dict, key: str, lo: int, hi: int, default: Any = ...) -> Any:
    v = h.get(key)
    if v is None:
        if default is ...:
            raise _Bad(f"'{key}' is required")
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _Bad(f"'{key}' must be an integer in [{lo}, {hi}], got {_show(v)}")
    return v


def _num(h: dict, key: str, lo: float, hi: float, default: Any = ..., *, open_lo: bool = False) -> Any:
    v = h.get(key)
    if v is None:
        if default is ...:
            raise _Bad(f"'{key}' is required")
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _Bad(f"'{key}' must be a finite number, got {_show(v)}")
    if v < lo or v > hi or (open_lo and v == lo):
        raise _Bad(f"'{key}' must lie in {'(' if open_lo else '['}{lo}, {hi}], got {_show(v)}")
    return float(v)


def _str(
    h: dict, key: str, max_len: int = 64, default: Any = ..., choices: tuple[str, ...] | None = None
) -> Any:
    v = h.get(key)
    if v is None:
        if default is ...:
            raise _Bad(f"'{key}' is required")
        return default
    if not isinstance(v, str) or len(v) > max_len:
        raise _Bad(f"'{key}' must be a string of at most {max_len} characters, got {_show(v)}")
    if choices is not None and v not in choices:
        raise _Bad(f"'{key}' must be one of {list(choices)}, got {_show(v)}")
    return v


def _bool(h: dict, key: str, default: bool = False) -> bool:
    v = h.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _Bad(f"'{key}' must be true or false, got {_show(v)}")
    return v


def _handles(h: dict, key: str, spec: Spec, max_count: int) -> list[str] | None:
    v = h.get(key)
    if v is None:
        return None
    if (
        not isinstance(v, list)
        or not v
        or len(v) > max_count
        or not all(isinstance(x, str) and len(x) <= 64 for x in v)
    ):
        raise _Bad(f"'{key}' must be a list of 1 to {max_count} handle strings")
    return v


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _float_array(arrays: dict, name: str, shape_ok, expect: str) -> np.ndarray | None:
    a = arrays.pop(name, None)
    if a is None:
        return None
    if a.dtype.str not in FLOAT_DTYPES:
        raise _Bad(f"array '{name}' must be float16/32/64, got {a.dtype.str}")
    if not shape_ok(a.shape):
        raise _Bad(f"array '{name}' must have shape {expect}, got {tuple(a.shape)}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = a.astype(np.float32)  # a copy: never keep views into the receive buffer; overflow -> inf
    if not np.isfinite(out).all():
        raise _Bad(f"array '{name}' contains NaN or inf")
    return out


def _rest(arrays: dict, spec: Spec, frames: int | None) -> np.ndarray | None:
    """The optional 'rest' array, the parameters the client's rig shows unkeyed: (D,) for render (frames None);
    (D,) or (frames, D) for batch_render."""
    if frames is None:
        return _float_array(arrays, "rest", lambda s: s == (spec.dim,), f"({spec.dim},)")
    return _float_array(arrays, "rest", lambda s: s == (spec.dim,) or s == (frames, spec.dim),
                        f"({spec.dim},) or ({frames}, {spec.dim})")


def _no_more_arrays(arrays: dict) -> None:
    if arrays:
        raise _Bad(f"unexpected array(s) {sorted(arrays)[:8]} for this operation")


def _targets(arrays: dict, spec: Spec, frames: int | None) -> tuple[dict[str, np.ndarray], int | None]:
    """The target/<mode> arrays: (D,) for render (frames None) or (N, D) for batch_render."""
    out: dict[str, np.ndarray] = {}
    for name in [n for n in arrays if n.startswith("target/")]:
        mode = name[len("target/") :]
        if mode not in CONTROL_MODES:
            raise _Bad(f"unknown control mode {mode!r} in array '{name}'; modes are {list(CONTROL_MODES)}")
        if frames is None:
            a = _float_array(arrays, name, lambda s: s == (spec.dim,), f"({spec.dim},)")
        else:
            a = _float_array(
                arrays,
                name,
                lambda s: len(s) == 2 and s[1] == spec.dim and s[0] >= 1,
                f"(frames, {spec.dim})",
            )
            if a is None:  # pragma: no cover - the name was listed above
                continue
            if frames == -1:
                frames = a.shape[0]
            elif a.shape[0] != frames:
                raise _Bad(f"array '{name}' has {a.shape[0]} frames, other inputs have {frames}")
        if a is None:  # pragma: no cover - the name was listed above
            continue
        out[mode] = a
    return out, frames


def _image_fields(h: dict, spec: Spec) -> dict:
    return {
        "size": _int(h, "size", 1, spec.max_size, None),
        "format": _str(h, "format", default=FORMATS[0], choices=FORMATS),
        "quality": _int(h, "quality", 1, 100, 90),
        "origin": _str(h, "origin", default=ORIGINS[0], choices=ORIGINS),
        "colorspace": _str(h, "colorspace", default=COLORSPACES[0], choices=COLORSPACES),
        "timeout": _num(h, "timeout", 0.0, spec.max_timeout, None, open_lo=True),
    }


# ---- per operation ----------------------------------------------------------------------------------
def _v_hello(h, a, spec):
    _no_more_arrays(a)
    return {
        "token": h.get("token"),
        "protocol": _int(h, "protocol", 0, 65535, P.VERSION),
        "client": _str(h, "client", 128, ""),
    }, {}


def _v_plain(h, a, spec):
    _no_more_arrays(a)
    return {}, {}


def _v_geometry(h, a, spec):
    _no_more_arrays(a)
    return {"identity_modes": _int(h, "identity_modes", 0, 100_000, None), "half": _bool(h, "half")}, {}


def _v_new_face(h, a, spec):
    _no_more_arrays(a)
    psi = _num(h, "psi", -10.0, 10.0, 0.7)
    seeds = h.get("seeds")
    if seeds is not None:
        if "seed" in h and h["seed"] is not None:
            raise _Bad("give 'seed' or 'seeds', not both")
        if (
            not isinstance(seeds, list)
            or not seeds
            or len(seeds) > spec.max_seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds)
        ):
            raise _Bad(f"'seeds' must be a list of 1 to {spec.max_seeds} integers in [0, 2**32)")
        return {
            "seeds": seeds,
            "psi": psi,
            "many": True,
            "timeout": _num(h, "timeout", 0.0, spec.max_timeout, None, open_lo=True),
        }, {}
    seed = _int(h, "seed", 0, 2**32 - 1)
    return {
        "seeds": [seed],
        "psi": psi,
        "many": False,
        "timeout": _num(h, "timeout", 0.0, spec.max_timeout, None, open_lo=True),
    }, {}


def _latent_shape_ok(spec: Spec):
    return lambda s: s in ((spec.num_ws, spec.w_dim), (1, spec.num_ws, spec.w_dim), (spec.w_dim,))


def _as_wplus(ws: np.ndarray, spec: Spec) -> np.ndarray:
    if ws.ndim == 3:
        return ws[0]
    if ws.ndim == 1:
        return np.repeat(ws[None], spec.num_ws, axis=0)
    return ws


def _v_upload(h, a, spec):
    ws = _float_array(a, "ws", _latent_shape_ok(spec), f"({spec.num_ws}, {spec.w_dim}) or ({spec.w_dim},)")
    if ws is None:
        raise _Bad("array 'ws' (the latent) is required")
    _no_more_arrays(a)
    return {}, {"ws": _as_wplus(ws, spec)}


def _v_get_latent(h, a, spec):
    _no_more_arrays(a)
    return {"handle": _str(h, "handle")}, {}


def _v_release(h, a, spec):
    _no_more_arrays(a)
    handles = _handles(h, "handles", spec, spec.max_handles)
    if handles is None:
        handles = [_str(h, "handle")]
    return {"handles": handles}, {}


def _v_fit(h, a, spec):
    _no_more_arrays(a)
    handles = _handles(h, "handles", spec, spec.max_handles)
    if handles is not None:
        if h.get("handle") is not None:
            raise _Bad("give 'handle' or 'handles', not both")
        many = True
    else:
        handles, many = [_str(h, "handle")], False
    return {
        "handles": handles,
        "many": many,
        "named": _bool(h, "named"),
        "final_quality": _bool(h, "final_quality"),  # refine the DFR by a per-image fit (rig/final_quality.py)
        "timeout": _num(h, "timeout", 0.0, spec.max_timeout, None, open_lo=True),
    }, {}


def _v_render(h, a, spec):
    fields = _image_fields(h, spec)
    fields["slot"] = _str(h, "slot", 64, "default")
    handle = _str(h, "handle", 64, None)
    ws = _float_array(a, "ws", _latent_shape_ok(spec), f"({spec.num_ws}, {spec.w_dim}) or ({spec.w_dim},)")
    if (handle is None) == (ws is None):
        raise _Bad("render needs exactly one face: a 'handle' or an array 'ws'")
    targets, _ = _targets(a, spec, None)
    rest = _rest(a, spec, None)
    _no_more_arrays(a)
    fields["handle"] = handle
    arrays = {f"target/{m}": v for m, v in targets.items()}
    if rest is not None:
        arrays["rest"] = rest
    if ws is not None:
        arrays["ws"] = _as_wplus(ws, spec)
    return fields, arrays


def _v_batch_render(h, a, spec):
    fields = _image_fields(h, spec)
    handle = _str(h, "handle", 64, None)
    handles = _handles(h, "handles", spec, spec.max_frames)
    # Only (frames, num_ws, w_dim): a 2-D array would be ambiguous, one face's W+ (num_ws, w_dim) read as
    # num_ws frames of W latents. Send one face as a handle (or repeat it) instead.
    ws = _float_array(
        a,
        "ws",
        lambda s: len(s) == 3 and s[0] >= 1 and s[1:] == (spec.num_ws, spec.w_dim),
        f"(frames, {spec.num_ws}, {spec.w_dim}) (one W+ latent per frame; for one face use 'handle')",
    )
    if sum(x is not None for x in (handle, handles, ws)) != 1:
        raise _Bad("batch_render needs exactly one of 'handle', 'handles' or an array 'ws'")
    frames = -1
    if handles is not None:
        frames = len(handles)
    if ws is not None:
        frames = ws.shape[0]
    count = _int(h, "count", 1, spec.max_frames, None)
    if count is not None:
        if frames not in (-1, count):
            raise _Bad(f"'count' {count} disagrees with the {frames} frames of the other inputs")
        frames = count
    targets, frames = _targets(a, spec, frames)
    rest = a.pop("rest", None)  # checked once the frame count is known
    _no_more_arrays(a)
    frame_ids = h.get("frame_ids")
    if frame_ids is not None:
        if not isinstance(frame_ids, list) or not all(
            isinstance(f, int) and not isinstance(f, bool) and abs(f) <= 2**53 for f in frame_ids
        ):
            raise _Bad("'frame_ids' must be a list of integers")
        if frames == -1:
            frames = len(frame_ids)
        elif len(frame_ids) != frames:
            raise _Bad(f"'frame_ids' has {len(frame_ids)} entries for {frames} frames")
    if frames == -1:
        raise _Bad("batch_render needs per-frame inputs ('handles', 'ws' or target arrays) or a 'count'")
    if frames > spec.max_frames:
        raise _Bad(f"at most {spec.max_frames} frames per batch_render, got {frames}")
    rest = _rest({} if rest is None else {"rest": rest}, spec, frames)
    fields.update(
        handle=handle,
        handles=handles,
        frames=frames,
        frame_ids=frame_ids if frame_ids is not None else list(range(frames)),
        final_quality=_bool(h, "final_quality"),  # closed-loop editing per frame (rig/final_quality.py)
    )
    arrays = {f"target/{m}": v for m, v in targets.items()}
    if rest is not None:
        arrays["rest"] = rest
    if ws is not None:
        arrays["ws"] = ws
    return fields, arrays


def _v_cancel(h, a, spec):
    _no_more_arrays(a)
    target = h.get("request")
    if isinstance(target, bool) or not (
        isinstance(target, int) or (isinstance(target, str) and len(target) <= 128)
    ):
        raise _Bad("'request' (the id of the request to cancel) must be an integer or a string")
    return {"request": target}, {}


_VALIDATORS = {
    "hello": _v_hello,
    "ping": _v_plain,
    "info": _v_plain,
    "stats": _v_plain,
    "geometry": _v_geometry,
    "new_face": _v_new_face,
    "upload_latent": _v_upload,
    "get_latent": _v_get_latent,
    "release": _v_release,
    "fit": _v_fit,
    "render": _v_render,
    "batch_render": _v_batch_render,
    "cancel": _v_cancel,
    "shutdown": _v_plain,
}
