"""The engine server on loopback: a real EngineServer (threads, sockets) driven by the client library and by
raw sockets for the misbehaving cases."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from stylerig_addon import protocol as P
from stylerig_addon.client import Client, EngineConnectionError, EngineError
from stylerig_addon.streaming import StreamingRenderer
from stylerig_server.service import EngineServer
from stylerig_server.worker import WorkerConfig
from test_server_engine import make_engine


class Running:
    def __init__(self, server: EngineServer, info: dict):
        self.server, self.info, self.engine = server, info, server.engine
        self.clients: list[Client] = []

    def client(self, **kw) -> Client:
        c = Client.connect(self.info, **kw)
        self.clients.append(c)
        return c

    def raw(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.info["port"]), timeout=10)
        self.clients.append(s)
        return s

    def raw_hello(self) -> tuple[socket.socket, object]:
        s = self.raw()
        P.send_frame(s, {"op": "hello", "id": 0, "token": self.server.token, "protocol": 1})
        stream = s.makefile("rb")
        assert P.read_frame(stream).header["ok"]
        return s, stream


@pytest.fixture
def serve(tmp_path):
    running: list[Running] = []

    def start(*, rig: bool = False, max_batch: int = 8, unix: bool = True, engine=None, **kw) -> Running:
        engine = engine or make_engine(rig=rig, max_batch=max_batch)
        config = kw.pop("worker_config", None) or WorkerConfig(max_batch=max_batch)
        unix_path = tmp_path / f"e{len(running)}.sock" if unix else None
        server = EngineServer(
            engine,
            port=kw.pop("port", 0),
            unix_path=unix_path,
            token_file=tmp_path / f"token{len(running)}",
            worker_config=config,
            **kw,
        )
        r = Running(server, server.start())
        running.append(r)
        return r

    yield start
    for r in running:
        for c in r.clients:
            c.close()
        r.server.shutdown()
        r.engine.generator.gate = None


def expect_error(code: str, fn, *args, **kwargs) -> EngineError:
    with pytest.raises(EngineError) as e:
        fn(*args, **kwargs)
    assert e.value.code == code, e.value
    return e.value


# ---- connecting and authentication ---------------------------------------------------------------------
def test_listen_info_token_file_and_both_sockets(serve):
    r = serve()
    info = r.info
    assert info["event"] == "listening" and info["host"] == "127.0.0.1" and info["port"] > 0
    assert info["protocol"] == 1 and info["pid"] == os.getpid()
    mode = os.stat(info["token_file"]).st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert Path(info["token_file"]).read_text().strip() == r.server.token and len(r.server.token) == 64
    assert stat.S_IMODE(os.stat(info["unix"]).st_mode) == 0o600
    tcp = r.client()
    unix = Client.connect(info["unix"], token_file=info["token_file"])
    r.clients.append(unix)
    assert tcp.ping() > 0 and unix.ping() > 0
    assert tcp.hello["protocol"] == 1 and "render" in tcp.capabilities["ops"]
    assert tcp.capabilities["formats"] == ["rgba8", "float16", "jpeg"]
    assert unix.sock.family == socket.AF_UNIX


def test_binds_loopback_only(serve):
    r = serve(unix=False)
    s = r.server._listeners[0]
    assert s.getsockname()[0] == "127.0.0.1"


def read_all(sock: socket.socket) -> list[dict]:
    """Frames until the server closes the connection."""
    stream = sock.makefile("rb")
    out = []
    while True:
        try:
            out.append(P.read_frame(stream).header)
        except (P.ConnectionLost, OSError):
            return out


def test_wrong_or_missing_token_closes_the_connection(serve):
    r = serve()
    with pytest.raises(EngineError) as e:
        Client.connect(r.info, token="0" * 64)
    assert e.value.code == "unauthorized"
    s = r.raw()
    P.send_frame(s, {"op": "ping", "id": 1})
    replies = read_all(s)
    assert [h["error"]["code"] for h in replies] == ["unauthorized"] and replies[0]["id"] == 1
    s = r.raw()
    P.send_frame(s, {"op": "hello", "id": 1, "token": 12345})
    assert [h["error"]["code"] for h in read_all(s)] == ["unauthorized"]
    assert r.client().ping() > 0  # the server is fine


def test_hello_must_come_in_time(serve):
    r = serve(auth_timeout=0.3)
    s = r.raw()
    t = time.monotonic()
    replies = read_all(s)
    assert [h["error"]["code"] for h in replies] == ["unauthorized"] and "no hello" in replies[0]["error"][
        "message"
    ]
    assert time.monotonic() - t < 5


def test_idle_sockets_of_other_users_cannot_lock_the_owner_out(serve):
    """Anyone on the machine can open the TCP port. Idle unauthenticated sockets have their own small cap (the
    longest-waiting is evicted by a newcomer) and a short deadline, so they never take the authenticated slots:
    the owner still gets in over the Unix socket and over TCP, and renders."""
    r = serve(max_connections=4, max_unauthenticated=8, auth_timeout=1.5)
    idle = [r.raw() for _ in range(70)]  # never send anything
    wait_stats_server(r, lambda s: r.server.accepted == 70 and s["unauthenticated"] <= 8)
    unix = Client.connect(r.info["unix"], token_file=r.info["token_file"])
    r.clients.append(unix)
    tcp = r.client()  # evicts the longest-waiting idle socket, then authenticates at once
    h = unix.new_face(3)
    np.testing.assert_array_equal(unix.render(h), r.engine.render([h])[0])
    np.testing.assert_array_equal(tcp.render(h), r.engine.render([h])[0])
    stats = unix.stats()
    assert stats["connections"] == 2 and stats["unauthenticated"] <= 8
    evicted = read_all(idle[0])  # the first were evicted by later ones, answered with a null id, closed
    assert [(f["id"], f["error"]["code"]) for f in evicted] == [(None, "unauthorized")]
    assert "waiting to authenticate" in evicted[0]["error"]["message"]
    late = read_all(idle[-1])  # the last ones are closed at the deadline
    assert [f["error"]["code"] for f in late] == ["unauthorized"] and "no hello within" in late[0]["error"]["message"]
    wait_stats_server(r, lambda s: s["unauthenticated"] == 0)
    assert unix.ping() > 0 and tcp.ping() > 0


def test_a_slow_hello_is_closed_at_the_deadline(serve):
    """The deadline is for the whole hello, not per read: trickling a frame does not keep a socket open."""
    import select

    r = serve(auth_timeout=0.6)
    s = r.raw()
    frame = P.encode_frame({"op": "hello", "id": 1, "token": r.server.token, "protocol": 1})
    t = time.monotonic()
    for b in frame:  # one byte every 0.1 s (12 s for the frame) until the server answers
        if select.select([s], [], [], 0.1)[0]:
            break
        s.sendall(bytes([b]))
    answered = time.monotonic() - t
    assert 0.5 < answered < 3
    # (the bytes the server never read may reset the connection before the reply is read)
    assert [f["error"]["code"] for f in read_all(s)] in ([], ["unauthorized"])
    wait_stats_server(r, lambda st: st["unauthenticated"] == 0)


def test_authenticated_connections_over_the_limit_get_busy(serve):
    r = serve(max_connections=2)
    a, b = r.client(), r.client()
    s = r.raw()
    P.send_frame(s, {"op": "hello", "id": 5, "token": r.server.token, "protocol": 1})
    replies = read_all(s)
    assert [(f["id"], f["error"]["code"]) for f in replies] == [(5, "busy")]
    assert "too many connections (2)" in replies[0]["error"]["message"]
    assert a.ping() > 0 and b.ping() > 0
    b.close()
    wait_stats_server(r, lambda st: st["connections"] == 1)
    assert r.client().ping() > 0  # a freed slot can be taken again


def wait_stats_server(r: Running, done, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with r.server._conn_lock:
            stats = {"connections": sum(c.authenticated for c, _ in r.server._connections.values()),
                     "unauthenticated": len(r.server._pending)}
        if done(stats):
            return
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)


def test_garbage_and_wrong_versions_get_an_answer_then_close(serve):
    r = serve()
    for data, code in (
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_frame"),
        (P.PREFIX.pack(P.MAGIC, 2, 0, 2, 0) + b"{}", "unsupported_version"),
    ):
        s = r.raw()
        s.sendall(data)
        assert [h["error"]["code"] for h in read_all(s)] == [code]
    s = r.raw()
    P.send_frame(s, {"op": "hello", "id": 1, "token": r.server.token, "protocol": 7})
    assert [h["error"]["code"] for h in read_all(s)] == ["unsupported_version"]


# ---- malformed requests keep the connection usable -----------------------------------------------------
def test_bad_requests_get_clear_errors_and_the_connection_survives(serve):
    r = serve()
    s, stream = r.raw_hello()
    dim = r.engine.layout.dim

    def ask(data: bytes) -> dict:
        s.sendall(data)
        return P.read_frame(stream).header

    def raw(header: bytes, payload: bytes = b"") -> bytes:
        return P.PREFIX.pack(P.MAGIC, P.VERSION, 0, len(header), len(payload)) + header + payload

    nan_target = np.zeros(dim, np.float32)
    nan_target[3] = np.nan
    cases = [
        (raw(b"{oops"), "bad_json", "not valid UTF-8 JSON"),
        (raw(b'{"op": "ping", "psi": NaN}'), "bad_json", "NaN"),
        (raw(b'{"op": "ping", "id": 4, "arrays": [{"name": "a"}]}', b"12345678"), "bad_arrays", "dtype"),
        (P.encode_frame({"op": "teleport", "id": 5}), "unknown_op", "unknown operation 'teleport'"),
        (P.encode_frame({"id": 6}), "bad_request", "'op'"),
        (P.encode_frame({"op": "new_face", "id": 7, "seed": -3}), "bad_request", "'seed'"),
        (P.encode_frame({"op": "new_face", "id": 8, "seed": 1, "psi": "high"}), "bad_request", "'psi'"),
        (
            P.encode_frame({"op": "render", "id": 9, "handle": "nope"}),
            "unknown_handle",
            "unknown latent handle",
        ),
        (P.encode_frame({"op": "render", "id": 10, "handle": "h", "size": 0}), "bad_request", "'size'"),
        (
            P.encode_frame(
                {"op": "render", "id": 11, "handle": "h"}, {"target/pose": np.zeros(dim - 1, np.float32)}
            ),
            "bad_request",
            f"({dim},)",
        ),
        (
            P.encode_frame({"op": "render", "id": 12, "handle": "h"}, {"target/pose": nan_target}),
            "bad_request",
            "NaN",
        ),
        (
            P.encode_frame({"op": "upload_latent", "id": 13}, {"ws": np.zeros((3, 3), np.float32)}),
            "bad_request",
            "shape",
        ),
        (
            P.encode_frame({"op": "render", "id": 14, "handle": "h", "format": "png"}),
            "bad_request",
            "'format'",
        ),
        (P.encode_frame({"op": "fit", "id": 15, "handle": "nope"}), "not_available", "no DFR loaded"),
        (
            P.encode_frame({"op": "get_latent", "id": 16, "handle": "nope"}),
            "unknown_handle",
            "unknown latent handle",
        ),
        (P.encode_frame({"op": "hello", "id": 17, "token": "x"}), "bad_request", "already"),
        (  # one face's W+ (num_ws, w_dim) is not num_ws frames
            P.encode_frame({"op": "batch_render", "id": 18}, {"ws": np.zeros((4, 6), np.float32)}),
            "bad_request",
            "(frames, 4, 6)",
        ),
        (  # arrays must start on 8-byte boundaries
            raw(
                b'{"op": "upload_latent", "id": 19, "arrays": [{"name": "ws", "dtype": "<f4", "shape": [6], '
                b'"offset": 4, "nbytes": 24}]}',
                bytes(28),
            ),
            "bad_arrays",
            "not a multiple of 8",
        ),
        (P.encode_frame({"op": "ping", "id": [1]}), "bad_request", "'id'"),
    ]
    for data, code, text in cases:
        h = ask(data)
        assert h["ok"] is False and h["final"] is True
        assert h["error"]["code"] == code and text in h["error"]["message"], (code, h)
    h = ask(P.encode_frame({"op": "ping", "id": 99}))
    assert h["ok"] and h["id"] == 99


def test_oversized_frame_is_refused_before_reading_it(serve):
    r = serve(limits=P.Limits(max_header=1 << 16, max_payload=1 << 20))
    s, stream = r.raw_hello()
    s.sendall(P.PREFIX.pack(P.MAGIC, P.VERSION, 0, 2, 1 << 40))  # claims a terabyte, sends nothing more
    h = P.read_frame(stream).header
    assert h["error"]["code"] == "too_large"
    with pytest.raises(P.ConnectionLost):
        P.read_frame(stream)
    assert r.client().ping() > 0


# ---- operations ----------------------------------------------------------------------------------------
def test_faces_latents_and_renders_match_the_engine(serve):
    r = serve()
    c = r.client()
    info = c.info()
    assert info["generator"]["resolution"] == 16 and info["layout"]["names"] == list(r.engine.layout.names)
    h = c.new_face(seed=42, psi=0.6)
    ws = c.get_latent(h)
    ref = r.engine.map_seeds([42], 0.6)[0].numpy()
    np.testing.assert_array_equal(ws, ref)
    assert len(set(c.new_faces([1, 2, 3]))) == 3
    img = c.render(h)
    assert img.shape == (16, 16, 4) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, r.engine.render([h])[0])
    np.testing.assert_array_equal(c.render(h, size=40), r.engine.render([h], size=40)[0])
    f16 = c.render(h, format="float16", colorspace="linear", origin="bottom")
    np.testing.assert_array_equal(
        f16, r.engine.render([h], fmt="float16", colorspace="linear", origin="bottom")[0]
    )
    jpeg = c.render(h, format="jpeg", size=64, quality=80)
    assert isinstance(jpeg, bytes) and jpeg[:2] == b"\xff\xd8"
    up = c.upload_latent(ws)
    np.testing.assert_array_equal(c.render(ws), img)  # a latent in the request itself
    np.testing.assert_array_equal(c.render(up), img)
    assert c.release([up, h]) == 2
    expect_error("unknown_handle", c.render, h)
    stats = c.stats()
    assert stats["renders"] >= 5 and stats["connections"] >= 1


def test_the_addon_names_what_differs_between_its_stored_layout_and_the_engines(serve):
    from stylerig_addon.layout import Layout

    from stylerig_engine.params import layout_for_model
    from test_server_engine import tiny_model

    info = serve().client().info()
    engine = Layout.from_description(info["layout"])
    assert Layout.from_description(engine.dumps()).differences(engine) == []
    model = tiny_model()
    model.expression_names = ["jawOpen", "smile"]  # same sizes, another meaning
    renamed = Layout.from_description(layout_for_model(model).describe())
    assert renamed.differences(engine) == [
        "entry 5: 'expression/smile' in the rig, 'expression/eyeBlink_L' at the engine"
    ]
    bigger = layout_for_model(model).describe()
    bigger["blocks"][0]["size"] += 1  # one more identity mode
    for b in bigger["blocks"][1:]:
        b["offset"] += 1
    bigger["names"].insert(3, "identity/003")
    bigger["prior_mean"].insert(3, 0.0)
    bigger["prior_std"].insert(3, 1.0)
    assert Layout.from_description(bigger).differences(engine) == ["identity: 4 entries in the rig, 3 at the engine"]


def test_latent_uploads_and_reads_run_on_the_device_worker(serve, monkeypatch):
    r = serve()
    threads: list[str] = []
    def spying(original):
        def spy(*args, **kwargs):
            threads.append(threading.current_thread().name)
            return original(*args, **kwargs)

        return spy

    for name in ("upload", "latent"):
        monkeypatch.setattr(r.engine, name, spying(getattr(r.engine, name)))
    c = r.client()
    ws = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(c.get_latent(c.upload_latent(ws)), ws)
    assert len(threads) == 2 and set(threads) == {"stylerig-device-worker"}


def test_geometry(serve):
    r = serve()
    meta, arrays = r.client().geometry(identity_modes=2)
    np.testing.assert_array_equal(arrays["vertices"], r.engine.model.neutral)
    np.testing.assert_array_equal(arrays["polygon_vertices"], r.engine.model.polygon_vertices)
    assert arrays["identity_basis"].shape == (2, 8, 3)
    assert (
        meta["expression_names"] == ["jawOpen", "eyeBlink_L"]
        and meta["layout"]["blocks"][0]["name"] == "identity"
    )


def test_fit_and_rig_driven_renders(serve):
    r = serve(rig=True)
    c = r.client()
    h = c.new_face(5)
    p = c.fit(h)
    np.testing.assert_allclose(p, r.engine.fit(h), rtol=1e-6)
    assert c.fit([h, h]).shape == (2, r.engine.layout.dim)
    named = c.request("fit", handle=h, named=True).header["params"]
    assert set(named) == {"identity", "albedo", "expression", "rotation", "translation", "illumination"}
    target = p.copy()
    target[r.engine.layout.slice("rotation")] = [0.1, 0.5, 0.0]
    img = c.render(h, {"pose": target, "expression": target})
    np.testing.assert_array_equal(img, r.engine.render([h], {"pose": target, "expression": target})[0])
    assert not np.array_equal(img, c.render(h))
    expect_error("not_available", c.render, h, {"albedo": target})


def test_batch_render_streams_frames_in_order_with_progress(serve):
    r = serve(rig=True, max_batch=4)
    c = r.client()
    h = c.new_face(9)
    p = c.fit(h)
    n = 10
    targets = np.repeat(p[None], n, 0)
    targets[:, r.engine.layout.slice("rotation")][:, 1] = np.linspace(-0.5, 0.5, n)
    frames = list(c.batch_render(h, {"pose": targets}, frame_ids=list(range(100, 100 + n)), size=24))
    assert [f.frame for f in frames] == list(range(100, 100 + n))
    assert [f.index for f in frames] == list(range(n)) and [f.done for f in frames] == list(range(1, n + 1))
    assert all(f.total == n for f in frames)
    ref = r.engine.render([h] * n, {"pose": targets}, size=24)
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), ref)
    # several faces, JPEG frames, no targets
    hs = c.new_faces([1, 2, 3])
    jp = list(c.batch_render(hs, format="jpeg"))
    assert len(jp) == 3 and all(f.image[:2] == b"\xff\xd8" for f in jp)
    expect_error("bad_request", lambda: list(c.batch_render(h)))  # no frame count at all
    assert len(list(c.batch_render(h, count=2))) == 2


def test_cancel_a_running_batch(serve):
    r = serve(max_batch=2)
    r.engine.generator.delay = 0.02
    c = r.client()
    h = c.new_face(1)
    ids = []
    got = []
    with pytest.raises(EngineError) as e:
        for f in c.batch_render(h, count=500, on_start=ids.append):
            got.append(f.index)
            if len(got) == 3:
                assert c.cancel(ids[0]) is True
    assert e.value.code == "cancelled" and e.value.header["done"] < 20
    assert got == list(range(len(got)))
    assert c.cancel(ids[0]) is False  # already finished
    assert c.ping() > 0


def test_leaving_the_frame_loop_cancels_the_batch(serve):
    r = serve(max_batch=2)
    r.engine.generator.delay = 0.01
    c = r.client()
    h = c.new_face(1)
    for f in c.batch_render(h, count=300):
        if f.index == 2:
            break
    time.sleep(0.3)
    rendered = c.stats()["frames_rendered"]
    time.sleep(0.3)
    assert c.stats()["frames_rendered"] == rendered < 60


# ---- scheduling: latest-wins, batching, busy, timeouts ---------------------------------------------------
def hold(r: Running):
    """Make the generator block until the returned event is set; returns (gate, entered)."""
    gen = r.engine.generator
    gen.gate = threading.Event()
    gen.entered.clear()
    return gen.gate, gen.entered


def wait_stats(r: Running, done, timeout: float = 10) -> None:
    """Wait until `done(worker stats)` holds. Requests on other connections (or still in a socket buffer)
    reach the worker in any order, so a test that needs a given queue state must see it first."""
    deadline = time.monotonic() + timeout
    while not done(r.server.worker.stats()):
        assert time.monotonic() < deadline, f"worker never reached the state: {r.server.worker.stats()}"
        time.sleep(0.005)


def test_latest_wins_per_client_and_every_request_is_answered_once(serve):
    r = serve()
    c = r.client()
    h = c.new_face(3)
    gate, entered = hold(r)
    first = c.render_async(h, size=16)
    assert entered.wait(5)  # the worker is inside the generator with `first`
    queued = [c.render_async(h, size=s) for s in (17, 18, 19)]
    other_slot = c.render_async(h, size=20, slot="thumbnail")
    wait_stats(r, lambda s: s["superseded"] == 2 and s["queued_renders"] == 2)
    gate.set()
    assert first.result(10).header["ok"]
    for stale in queued[:2]:
        with pytest.raises(EngineError) as e:
            stale.result(10)
        assert e.value.code == "superseded"
    assert queued[2].result(10).arrays["image"].shape == (19, 19, 4)
    assert other_slot.result(10).arrays["image"].shape == (20, 20, 4)
    time.sleep(0.2)
    assert all(p.replies.empty() for p in [first, *queued, other_slot])  # nothing answered twice
    assert c.stats()["superseded"] == 2


def test_renders_from_several_clients_share_one_generator_call(serve):
    r = serve()
    clients = [r.client() for _ in range(4)]
    handles = [c.new_face(i) for i, c in enumerate(clients)]
    gate, entered = hold(r)
    blocker = clients[0].render_async(handles[0])
    assert entered.wait(5)
    pending = [c.render_async(h, size=12 + i) for i, (c, h) in enumerate(zip(clients, handles))]
    wait_stats(r, lambda s: s["queued_renders"] == 4)
    r.engine.generator.batches.clear()
    gate.set()
    blocker.result(10)
    results = [p.result(10) for p in pending]
    assert r.engine.generator.batches == [1, 4]  # the blocker, then one call for all four clients
    for i, (res, h) in enumerate(zip(results, handles)):
        assert res.header["batch"] == 4
        np.testing.assert_array_equal(res.arrays["image"], r.engine.render([h], size=12 + i)[0])


def test_rest_travels_with_renders_and_batches(serve):
    r = serve(rig=True, max_batch=8)
    clients = [r.client() for _ in range(4)]
    h = clients[0].new_face(4)
    p = clients[0].fit(h)
    rest = [None, p + 0.1, None, p - 0.2]
    gate, entered = hold(r)
    blocker = clients[0].render_async(h, slot="blocker")
    assert entered.wait(5)
    pending = [c.render_async(h, {"expression": p}, rest=x) for c, x in zip(clients, rest)]
    wait_stats(r, lambda s: s["queued_renders"] == 4)
    r.engine.generator.batches.clear()
    gate.set()
    blocker.result(10)
    results = [q.result(10).arrays["image"] for q in pending]
    assert sorted(r.engine.generator.batches) == [1, 2, 2]  # the blocker; with and without a rest: two calls
    for image, x in zip(results, rest):
        np.testing.assert_array_equal(image, r.engine.render([h], {"expression": p}, rest=x)[0])
    assert not np.array_equal(results[0], results[1])
    # batch_render: one rest for every frame, or one per frame
    n = 3
    targets = np.repeat(p[None], n, 0)
    per_frame = p + np.linspace(0, 0.3, n)[:, None].astype(np.float32)
    for x in (p + 0.1, per_frame):
        frames = np.stack([f.image for f in clients[0].batch_render(h, {"expression": targets}, rest=x)])
        np.testing.assert_array_equal(frames, r.engine.render([h] * n, {"expression": targets}, rest=x))
    # the live preview sends the rig's match (the face spec's "rest") with its targets
    stream = StreamingRenderer(lambda: Client.connect(r.info))
    try:
        seq = stream.submit({"seed": 4, "psi": 0.7, "rest": [float(x) for x in rest[1]]}, {"expression": p})
        np.testing.assert_array_equal(stream.wait(seq, 10).image, results[1])
    finally:
        stream.close()
    e = expect_error("bad_request", clients[0].render, h, {"expression": p}, rest=p[:-1])
    assert "array 'rest' must have shape" in str(e)
    e = expect_error("bad_request",
                     lambda: list(clients[0].batch_render(h, {"expression": targets}, rest=per_frame[:2])))
    assert "'rest'" in str(e) and f"({n}, {len(p)})" in str(e)


def test_full_queues_answer_busy(serve):
    r = serve(worker_config=WorkerConfig(max_batch=8, max_interactive=2, max_jobs=2, max_jobs_per_client=2))
    a, b, c = r.client(), r.client(), r.client()
    h = a.new_face(0)
    gate, entered = hold(r)
    running = a.render_async(h)
    assert entered.wait(5)
    qa, qb = a.render_async(h), b.render_async(h)
    wait_stats(r, lambda s: s["queued_renders"] == 2)
    expect_error("busy", c.render, h)
    jobs = [a.submit("new_face", seed=i) for i in range(2)]
    wait_stats(r, lambda s: s["queued_jobs"] == 2)
    expect_error("busy", a.new_face, 5)
    gate.set()
    for p in [running, qa, qb, *jobs]:
        assert p.result(10).header["ok"]
    assert c.render(h).shape == (16, 16, 4)


def test_requests_time_out_in_the_queue(serve):
    r = serve()
    c = r.client()
    h = c.new_face(0)
    gate, entered = hold(r)
    running = c.render_async(h, slot="a")
    assert entered.wait(5)
    late = c.render_async(h, slot="b", timeout=0.1)
    time.sleep(0.3)
    gate.set()
    assert running.result(10).header["ok"]
    with pytest.raises(EngineError) as e:
        late.result(10)
    assert e.value.code == "timeout"


def test_duplicate_request_ids_are_refused(serve):
    r = serve()
    s, stream = r.raw_hello()
    h = r.engine.new_face(0)
    gate, entered = hold(r)
    P.send_frame(s, {"op": "render", "id": 1, "handle": h})
    assert entered.wait(5)
    P.send_frame(s, {"op": "new_face", "id": 2, "seed": 1})
    P.send_frame(s, {"op": "new_face", "id": 2, "seed": 2})
    dup = P.read_frame(stream).header
    assert (
        dup["id"] == 2
        and dup["error"]["code"] == "bad_request"
        and "already in use" in dup["error"]["message"]
    )
    gate.set()
    replies = {P.read_frame(stream).header["id"] for _ in range(2)}
    assert replies == {1, 2}


def test_disconnect_mid_stream_frees_the_worker(serve):
    r = serve(max_batch=2)
    r.engine.generator.delay = 0.01
    s, stream = r.raw_hello()
    h = r.engine.new_face(0)
    P.send_frame(s, {"op": "batch_render", "id": 1, "handle": h, "count": 400})
    for i in range(3):
        assert P.read_frame(stream).header["index"] == i
    stream.close()  # (the makefile holds the socket open otherwise)
    s.close()
    deadline = time.monotonic() + 5
    while r.server.worker.stats()["queued_jobs"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    done = r.server.worker.stats()["frames_rendered"]
    time.sleep(0.4)
    assert r.server.worker.stats()["frames_rendered"] == done
    assert done < 400 - 100
    assert r.client().ping() > 0


def test_a_client_that_does_not_read_does_not_stall_others(serve):
    r = serve(max_batch=2)
    s, _ = r.raw_hello()
    h = r.engine.new_face(0)
    P.send_frame(s, {"op": "batch_render", "id": 1, "handle": h, "count": 5000, "size": 256})  # never read
    other = r.client()
    t = time.monotonic()
    for _ in range(5):
        other.render(h)
    assert time.monotonic() - t < 10
    assert r.server.worker.stats()["frames_rendered"] < 2000  # flow control holds the batch back


# ---- concurrency, shutdown -----------------------------------------------------------------------------
def test_concurrent_clients_every_request_answered_exactly_once(serve):
    r = serve()
    n_clients, n_requests = 4, 15
    errors: list[BaseException] = []
    answered: list[int] = []

    def run(i: int) -> None:
        try:
            c = r.client()
            h = c.new_face(i)
            pend = [c.render_async(h, slot=f"s{k}", size=8 + k % 3) for k in range(n_requests)]
            for p in pend:
                p.result(30)
                answered.append(1)
            time.sleep(0.05)
            assert all(p.replies.empty() for p in pend)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(answered) == n_clients * n_requests


def test_shutdown_request_answers_then_stops(serve, tmp_path):
    r = serve()
    c = r.client()
    other = r.client()
    token_file, unix = r.info["token_file"], r.info["unix"]
    c.shutdown()
    assert r.server.wait(10)
    assert not os.path.exists(token_file) and not os.path.exists(unix)
    with pytest.raises(EngineConnectionError):
        for _ in range(50):
            other.ping()
            time.sleep(0.05)
    with pytest.raises(EngineConnectionError):
        Client.connect(("127.0.0.1", r.info["port"]), token="x", connect_timeout=1)


# ---- the streaming helper for Blender ------------------------------------------------------------------
def test_streaming_renderer_is_latest_wins_and_never_blocks(serve):
    r = serve()
    r.engine.generator.delay = 0.02
    h = r.engine.new_face(1)
    stream = StreamingRenderer(lambda: Client.connect(r.info), size=16)
    try:
        t = time.perf_counter()
        seqs = [stream.submit(h) for _ in range(200)]
        assert time.perf_counter() - t < 0.5  # submit never waits for the engine
        result = stream.wait(seqs[-1], timeout=10)
        assert result is not None and result.seq == seqs[-1] and result.image.shape == (16, 16, 4)
        assert stream.stats["sent"] < 50  # coalesced locally and at the engine
        assert stream.poll() is None
        ws = r.engine.latent(h).numpy()
        seq = stream.submit(ws)  # a latent array is uploaded once
        np.testing.assert_array_equal(stream.wait(seq, 10).image, result.image)
        seq = stream.submit({"seed": 3, "psi": 0.5})
        assert stream.wait(seq, 10) is not None
    finally:
        stream.close()


def test_streaming_renderer_reconnects_when_the_engine_comes_back(serve, tmp_path):
    r1 = serve(unix=False)
    port, token_file = r1.info["port"], tmp_path / "shared.token"
    r1.server.token_file = None
    from stylerig_server import auth

    auth.write_token_file(token_file, r1.server.token)
    errors = []
    stream = StreamingRenderer(
        lambda: Client.connect(("127.0.0.1", port), token_file=token_file, connect_timeout=1),
        size=16,
        reconnect_interval=0.1,
        on_error=errors.append,
    )
    try:
        ws = r1.engine.latent(r1.engine.new_face(2)).numpy()
        seq = stream.submit(ws)
        first = stream.wait(seq, 10)
        assert first is not None and stream.status == "connected"
        r1.server.shutdown()
        seq = stream.submit(ws)  # sent while the engine is down
        time.sleep(0.3)
        assert stream.status in ("disconnected", "connecting")
        r2 = serve(unix=False, port=port)  # a new engine run: new token in the same file
        auth.write_token_file(token_file, r2.server.token)
        again = stream.wait(seq, 10)
        assert again is not None and again.seq == seq
        np.testing.assert_array_equal(again.image, first.image)
        assert stream.stats["reconnects"] >= 1
    finally:
        stream.close()


def test_fuzzed_bytes_never_take_the_server_down(serve):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    r = serve()
    h = r.engine.new_face(0)
    valid = P.encode_frame({"op": "render", "id": 1, "handle": h, "size": 8})

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.builds(lambda data, cut: valid[:cut] + data, st.binary(max_size=64), st.integers(0, 60)),
            st.builds(
                lambda pos, val: valid[:pos] + bytes([val]) + valid[pos + 1 :],
                st.integers(0, len(valid) - 1),
                st.integers(0, 255),
            ),
        )
    )
    def check(data):
        s, stream = r.raw_hello()
        s.settimeout(5)
        s.sendall(data + P.encode_frame({"op": "ping", "id": 77}))
        s.shutdown(socket.SHUT_WR)
        while True:  # every reply is a well-formed frame, until the server closes the connection
            try:
                header = P.read_frame(stream).header
            except (P.ConnectionLost, OSError):
                break
            assert set(header) >= {"id", "ok", "final"}
        stream.close()
        s.close()
        r.clients.remove(s)

    check()
    assert r.client().ping() > 0
    assert r.server.worker.thread.is_alive()
