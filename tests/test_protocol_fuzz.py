"""Property-based fuzzing of the frame decoder and of request validation: whatever arrives, the only possible
outcome is a decoded frame / a valid request or a ProtocolError with a documented code."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stylerig_addon import protocol as P
from stylerig_server.requests import OPS, Spec, validate

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = P.Limits(max_header=4096, max_payload=1 << 16)
SPEC = Spec(num_ws=4, w_dim=6, dim=39, resolution=16, max_size=512, max_frames=64)
CODES = {P.E_BAD_FRAME, P.E_TOO_LARGE, P.E_UNSUPPORTED_VERSION, P.E_BAD_JSON, P.E_BAD_ARRAYS}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

dtypes = st.sampled_from(["|u1", "|i1", "|b1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"])


@st.composite
def arrays(draw, max_side=5):
    dtype = np.dtype(draw(dtypes))
    shape = tuple(draw(st.lists(st.integers(0, max_side), max_size=3)))
    raw = draw(
        st.binary(
            min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize
        )
    )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


@st.composite
def valid_frames(draw):
    header = draw(
        st.dictionaries(st.text(max_size=8).filter(lambda k: k != "arrays"), json_values, max_size=5)
    )
    arrs = draw(st.dictionaries(st.text(min_size=1, max_size=10), arrays(), max_size=3))
    return header, arrs


def _decode_all(data: bytes) -> list[P.Frame]:
    """Feed `data` in two pieces, skipping non-fatal frame errors like the server does."""
    d = P.FrameDecoder(LIMITS)
    frames = []
    half = len(data) // 2
    for chunk in (data[:half], data[half:]):
        pending = chunk
        while True:
            try:
                frames += d.feed(pending)
                break
            except P.ProtocolError as e:
                assert e.code in CODES, e.code
                if e.fatal:
                    return frames
                pending = b""
    assert d.buffered <= len(data)
    return frames


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_decoder(data):
    _decode_all(data)


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes_after_a_valid_prefix(data):
    _decode_all(P.PREFIX.pack(P.MAGIC, P.VERSION, 0, min(len(data), 300), max(0, len(data) - 300)) + data)


@SETTINGS
@given(valid_frames())
def test_valid_frames_round_trip(frame):
    header, arrs = frame
    data = P.encode_frame(header, arrs)
    out = P.decode_frame(data)
    assert {k: v for k, v in out.header.items() if k != "arrays"} == json.loads(json.dumps(header))
    assert set(out.arrays) == set(arrs)
    for k, a in arrs.items():
        assert out.arrays[k].dtype == a.dtype and out.arrays[k].shape == a.shape
        assert out.arrays[k].tobytes() == a.tobytes()


@SETTINGS
@given(
    valid_frames(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6)
)
def test_mutated_frames_decode_or_fail_cleanly(frame, flips):
    data = bytearray(P.encode_frame(*frame) + P.encode_frame({"op": "ping"}))
    for pos, value in flips:
        data[pos % len(data)] = value
    _decode_all(bytes(data))


@SETTINGS
@given(st.lists(st.integers(0, 4096), max_size=5), valid_frames())
def test_arbitrary_chunking_gives_the_same_frames(cuts, frame):
    data = P.encode_frame(*frame) * 2
    d = P.FrameDecoder()
    frames = []
    last = 0
    for c in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        frames += d.feed(data[last:c])
        last = c
    assert len(frames) == 2 and frames[0].header == frames[1].header


# ---- request validation -------------------------------------------------------------------------------
ops = st.sampled_from(OPS + ("nope", "", "RENDER"))
field_values = st.one_of(
    json_values,
    st.sampled_from(
        [0, 1, -1, 16, 2**32, 1e308, "rgba8", "jpeg", "pose", "x" * 200, [1, 2], ["h1", "h2"], True]
    ),
)
field_names = st.sampled_from(
    [
        "id",
        "seed",
        "seeds",
        "psi",
        "handle",
        "handles",
        "size",
        "format",
        "quality",
        "origin",
        "colorspace",
        "slot",
        "timeout",
        "count",
        "frame_ids",
        "request",
        "token",
        "protocol",
        "identity_modes",
        "half",
        "named",
        "client",
    ]
)
array_names = st.sampled_from(
    ["ws", "target/pose", "target/expression", "target/smile", "target/", "image", "p"]
)


@st.composite
def float_arrays(draw):
    shape = draw(st.sampled_from([(39,), (2, 39), (4, 6), (6,), (1, 4, 6), (2, 4, 6), (38,), (0, 39), (3,)]))
    dtype = draw(st.sampled_from(["<f4", "<f2", "<f8", "<i4", "|u1"]))
    values = draw(
        st.lists(
            st.floats(allow_nan=True, allow_infinity=True, width=32),
            min_size=int(np.prod(shape)),
            max_size=int(np.prod(shape)),
        )
    )
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype[1] == "f":
            return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
        return (
            np.nan_to_num(np.array(values), nan=0, posinf=0, neginf=0)
            .clip(-100, 100)
            .astype(dtype)
            .reshape(shape)
        )


@SETTINGS
@given(
    ops,
    st.dictionaries(field_names, field_values, max_size=8),
    st.dictionaries(array_names, float_arrays(), max_size=3),
)
def test_validation_accepts_or_names_the_problem(op, fields, arrs):
    header = {"op": op, **fields}
    try:
        req = validate(header, arrs, SPEC)
    except P.ProtocolError as e:
        assert e.code in (P.E_BAD_REQUEST, P.E_UNKNOWN_OP)
        assert e.message and not e.fatal
        return
    assert req.op == op
    for name, a in req.arrays.items():  # what passes is finite float32 of the right shape
        assert a.dtype == np.float32 and np.isfinite(a).all()
        if name.startswith("target/"):
            assert a.shape[-1] == SPEC.dim
        if name == "ws":
            assert a.shape[-2:] == (SPEC.num_ws, SPEC.w_dim)
    if op == "batch_render":
        assert 1 <= req.frames <= SPEC.max_frames and len(req.fields["frame_ids"]) == req.frames


@SETTINGS
@given(
    st.integers(1, 6),
    st.sampled_from(["rgba8", "float16", "jpeg"]),
    st.integers(1, 512),
    st.lists(st.sampled_from(["pose", "expression", "illumination"]), unique=True),
)
def test_well_formed_renders_always_pass(frames, fmt, size, modes):
    targets = {f"target/{m}": np.zeros((frames, SPEC.dim), np.float32) for m in modes}
    req = validate(
        {"op": "batch_render", "id": 1, "handle": "abc", "format": fmt, "size": size, "count": frames},
        targets,
        SPEC,
    )
    assert req.frames == frames and req.fields["size"] == size
    single = {f"target/{m}": np.zeros(SPEC.dim, np.float16) for m in modes}
    req = validate({"op": "render", "id": "r", "handle": "abc", "format": fmt, "size": size}, single, SPEC)
    assert set(req.arrays) == set(single) and req.fields["slot"] == "default"
