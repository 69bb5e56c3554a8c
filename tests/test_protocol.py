"""The wire protocol codec (stylerig_addon.protocol): framing, arrays, limits, errors."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading

import numpy as np
import pytest
from stylerig_addon import protocol as P


def frame_bytes(header: dict, arrays=None) -> bytes:
    return P.encode_frame(header, arrays)


def raw_frame(
    header_bytes: bytes, payload: bytes = b"", *, magic=P.MAGIC, version=P.VERSION, flags=0
) -> bytes:
    return P.PREFIX.pack(magic, version, flags, len(header_bytes), len(payload)) + header_bytes + payload


def test_addon_package_imports_without_bpy_or_torch():
    import subprocess
    import sys

    code = (
        "import sys; import stylerig_addon, stylerig_addon.protocol, stylerig_addon.client; "
        "assert 'torch' not in sys.modules and 'bpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prefix_layout_is_documented_one():
    data = frame_bytes({"op": "ping", "id": 1})
    magic, version, flags, hlen, plen = struct.unpack("<4sHHIQ", data[:20])
    assert (magic, version, flags, plen) == (b"SRIG", 1, 0, 0)
    assert json.loads(data[20 : 20 + hlen]) == {"op": "ping", "id": 1}
    assert len(data) == 20 + hlen


@pytest.mark.parametrize("dtype", ["u1", "i1", "?", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"])
def test_arrays_round_trip_every_dtype(dtype):
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(3, 5)) * 50).astype(dtype)
    scalar = np.array(7, dtype=dtype)
    empty = np.zeros((0, 4), dtype=dtype)
    f = P.decode_frame(frame_bytes({"op": "x"}, {"a": a, "s": scalar, "e": empty}))
    assert f.header["op"] == "x"
    for name, ref in (("a", a), ("s", scalar), ("e", empty)):
        assert f.arrays[name].dtype == ref.dtype.newbyteorder("<") and f.arrays[name].shape == ref.shape
        np.testing.assert_array_equal(f.arrays[name], ref)


def test_big_endian_and_strided_inputs_go_out_little_endian_contiguous():
    a = np.arange(12, dtype=">f4").reshape(3, 4)
    strided = np.arange(40, dtype=np.int32).reshape(5, 8)[:, ::3]
    f = P.decode_frame(frame_bytes({}, {"a": a, "t": strided}))
    assert f.arrays["a"].dtype.str == "<f4"
    np.testing.assert_array_equal(f.arrays["a"], a)
    np.testing.assert_array_equal(f.arrays["t"], strided)
    with pytest.raises(TypeError):
        P.encode_frame({}, {"c": np.zeros(2, np.complex64)})


def test_arrays_are_8_byte_aligned_views_and_read_only():
    data = frame_bytes(
        {}, {"a": np.ones(3, np.uint8), "b": np.ones(2, np.float64), "c": np.ones(1, np.int16)}
    )
    header = json.loads(data[20 : 20 + struct.unpack("<I", data[8:12])[0]])
    assert [d["offset"] % 8 for d in header["arrays"]] == [0, 0, 0]
    f = P.decode_frame(data)
    with pytest.raises(ValueError):
        f.arrays["b"][0] = 2


def test_nan_in_header_cannot_be_sent_or_received():
    with pytest.raises(ValueError):
        P.encode_frame({"psi": float("nan")})
    with pytest.raises(P.ProtocolError) as e:
        P.decode_frame(raw_frame(b'{"psi": NaN}'))
    assert e.value.code == P.E_BAD_JSON and not e.value.fatal


@pytest.mark.parametrize(
    "header, code",
    [
        (b"{not json", P.E_BAD_JSON),
        (b"[1, 2]", P.E_BAD_JSON),
        (b"\xff\xfe", P.E_BAD_JSON),
        (b'{"a": Infinity}', P.E_BAD_JSON),
        (b"[" * 100000 + b"]" * 100000, P.E_BAD_JSON),
    ],
)
def test_bad_headers_are_non_fatal(header, code):
    d = P.FrameDecoder(P.Limits(max_header=1 << 20))
    with pytest.raises(P.ProtocolError) as e:
        d.feed(raw_frame(header) + frame_bytes({"op": "ping"}))
    assert e.value.code == code and not e.value.fatal
    assert [f.header for f in d.feed(b"")] == [{"op": "ping"}]  # in step: the next frame decodes


def test_fatal_framing_errors():
    cases = [
        (raw_frame(b"{}", magic=b"HTTP"), P.E_BAD_FRAME),
        (raw_frame(b"{}", version=2), P.E_UNSUPPORTED_VERSION),
        (raw_frame(b"{}", flags=1), P.E_BAD_FRAME),
        (raw_frame(b""), P.E_BAD_FRAME),
    ]
    for data, code in cases:
        d = P.FrameDecoder()
        with pytest.raises(P.ProtocolError) as e:
            d.feed(data)
        assert e.value.code == code and e.value.fatal
        with pytest.raises(P.ProtocolError):  # stays failed
            d.feed(frame_bytes({"op": "ping"}))


def test_limits_are_enforced_from_the_prefix_alone():
    limits = P.Limits(max_header=100, max_payload=1000)
    huge_payload = P.PREFIX.pack(P.MAGIC, P.VERSION, 0, 2, 2**63)  # no bytes follow: nothing allocated
    huge_header = P.PREFIX.pack(P.MAGIC, P.VERSION, 0, 2**32 - 1, 0)
    for prefix in (huge_payload, huge_header):
        d = P.FrameDecoder(limits)
        with pytest.raises(P.ProtocolError) as e:
            d.feed(prefix)
        assert e.value.code == P.E_TOO_LARGE and e.value.fatal
        with pytest.raises(P.ProtocolError) as e:
            P.read_frame(io.BytesIO(prefix), limits)
        assert e.value.code == P.E_TOO_LARGE
    assert (
        P.decode_frame(frame_bytes({"x": 1}, {"a": np.zeros(100, np.uint8)}), limits).arrays["a"].size == 100
    )


@pytest.mark.parametrize(
    "desc",
    [
        "not a list",
        [1],
        [{"name": "a", "dtype": "<f4", "shape": [2], "offset": 0, "nbytes": 4}],  # nbytes != 8
        [{"name": "a", "dtype": ">f4", "shape": [1], "offset": 0, "nbytes": 4}],  # big-endian not allowed
        [{"name": "a", "dtype": "O", "shape": [1], "offset": 0, "nbytes": 8}],
        [{"name": "a", "dtype": "<f4", "shape": [-1], "offset": 0, "nbytes": 4}],
        [{"name": "a", "dtype": "<f4", "shape": [100], "offset": 0, "nbytes": 400}],  # beyond the payload
        [
            {"name": "a", "dtype": "|u1", "shape": [4], "offset": 4, "nbytes": 4},
            {"name": "b", "dtype": "|u1", "shape": [4], "offset": 0, "nbytes": 4},
        ],  # overlapping / out of order
        [{"name": "a", "dtype": "|u1", "shape": [1], "offset": 0, "nbytes": 1}] * 2,  # duplicate name
        [{"name": "", "dtype": "|u1", "shape": [1], "offset": 0, "nbytes": 1}],
        [{"name": "a", "dtype": "|u1", "shape": [1.5], "offset": 0, "nbytes": 1}],
        [{"name": "a", "dtype": "|u1", "shape": [1] * 9, "offset": 0, "nbytes": 1}],
        [{"name": "a", "dtype": "|u1", "shape": [True], "offset": 0, "nbytes": 1}],
    ],
)
def test_inconsistent_array_descriptors_are_rejected(desc):
    data = raw_frame(json.dumps({"id": 5, "arrays": desc}).encode(), b"\0" * 8)
    with pytest.raises(P.ProtocolError) as e:
        P.decode_frame(data)
    assert e.value.code == P.E_BAD_ARRAYS and not e.value.fatal and e.value.request_id == 5


def test_incremental_decoder_byte_by_byte_and_batched():
    frames = [({"op": "a", "id": i}, {"x": np.arange(i, dtype=np.float32)}) for i in range(5)]
    data = b"".join(frame_bytes(h, a) for h, a in frames)
    d = P.FrameDecoder()
    out = []
    for i in range(len(data)):
        out += d.feed(data[i : i + 1])
    assert [f.header["id"] for f in out] == list(range(5)) and d.buffered == 0
    np.testing.assert_array_equal(out[4].arrays["x"], np.arange(4))
    assert [f.header["id"] for f in P.FrameDecoder().feed(data)] == list(range(5))


def test_decode_frame_checks_the_total_length():
    data = frame_bytes({"op": "x"}, {"a": np.zeros(4)})
    for bad in (data[:-1], data + b"\0"):
        with pytest.raises(P.ProtocolError) as e:
            P.decode_frame(bad)
        assert e.value.code == P.E_BAD_FRAME


def test_read_frame_over_a_socket_with_large_arrays():
    a, b = socket.socketpair()
    big = np.random.default_rng(0).integers(0, 255, size=(1024, 1024, 4), dtype=np.uint8)
    sent = threading.Thread(
        target=lambda: (
            P.send_frame(a, {"op": "img"}, {"image": big}),
            P.send_frame(a, {"op": "small"}),
            a.shutdown(socket.SHUT_WR),
        )
    )
    sent.start()
    stream = b.makefile("rb")
    f = P.read_frame(stream)
    np.testing.assert_array_equal(f.arrays["image"], big)
    assert P.read_frame(stream).header == {"op": "small"}
    with pytest.raises(P.ConnectionLost, match="connection closed"):
        P.read_frame(stream)
    sent.join()
    a.close()
    b.close()


def test_read_frame_reports_a_truncated_frame():
    data = frame_bytes({"op": "x"}, {"a": np.zeros(16)})
    with pytest.raises(P.ConnectionLost, match="middle of a frame"):
        P.read_frame(io.BytesIO(data[:-3]))
    with pytest.raises(P.ConnectionLost, match="middle of a frame"):
        P.read_frame(io.BytesIO(data[:10]))


def test_error_header_shape():
    h = P.error_header(P.E_BUSY, "full", 9, done=3)
    assert h == {"id": 9, "ok": False, "final": True, "error": {"code": "busy", "message": "full"}, "done": 3}
    assert P.is_final(h) and not P.is_final({"final": False})
