"""Latest-wins background rendering for an interactive viewport, over client.Client (stdlib + numpy, no bpy).

    stream = StreamingRenderer(lambda: Client.connect(addr, token_file=path), size=256)
    stream.submit(face, {"pose": p})                   # from a UI callback; returns at once
    result = stream.poll()                             # newest finished frame or None, from a timer

The sender thread never dies of an error: a request that fails is reported (`last_error`, `on_error`, the
`errors` count) and the next one is sent; a connection that fails is retried. Only a fault of this module itself
ends the thread, and then `status` is "failed" with the exception in `last_error`, so a UI polling the stream
can stop and say so instead of waiting forever.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import protocol as P
from .client import Client, EngineConnectionError, EngineError, Pending, _call, decode_image


@dataclass
class RenderResult:
    seq: int  # the value submit() returned for this request
    image: Any  # ndarray or JPEG bytes
    latency: float  # seconds from submit() to arrival
    header: dict = field(repr=False, default_factory=dict)


class StreamingRenderer:
    """Latest-wins background rendering for an interactive viewport.

    `submit()` never blocks: it replaces the not-yet-sent request with the new one. A background thread keeps
    at most `max_in_flight` requests at the engine (which also drops a queued one when a newer one comes from
    this connection). `poll()` returns the newest finished frame not yet taken (older ones are dropped).
    When the engine goes away the thread reconnects every `reconnect_interval` seconds (calling `connect`
    again, so a restarted engine's new token/address are picked up) and re-sends the latest request;
    latents given as arrays are uploaded again, since handles do not survive a restart.

    `face` may be a handle (str), a latent array, or {"seed": s, "psi": psi} (re-created after reconnects),
    with "rest": the rig's match (D floats, rig.face_spec), sent with the targets as the render's `rest`.
    """

    def __init__(
        self,
        connect: Callable[[], Client],
        *,
        size: int | None = None,
        format: str = "rgba8",
        slot: str = "viewport",
        max_in_flight: int = 2,
        reconnect_interval: float = 1.0,
        on_result: Callable[[RenderResult], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        **render_options,
    ):
        self._connect = connect
        self.options = dict(size=size, format=format, slot=slot, **render_options)
        self.max_in_flight = max(1, int(max_in_flight))
        self.reconnect_interval = reconnect_interval
        self.on_result, self.on_error = on_result, on_error
        self.client: Client | None = None
        self.status = "connecting"
        self.last_error: BaseException | None = None
        self._cond = threading.Condition()
        self._pending: tuple[int, Any, Any, float] | None = None  # (seq, face, targets, submitted_at)
        self._last_sent: tuple[int, Any, Any, float] | None = None
        self._in_flight: dict[int, Pending] = {}
        self._result: RenderResult | None = None
        self._best_seq = 0
        self._seq = itertools.count(1)
        self._handles: dict[Any, str] = {}
        self._closed = False
        self._ever_connected = False
        self.stats = {"submitted": 0, "sent": 0, "received": 0, "superseded": 0, "reconnects": 0, "errors": 0}
        self._thread = threading.Thread(target=self._run, name="stylerig-stream", daemon=True)
        self._thread.start()

    def submit(self, face: Any, targets: Mapping[str, Any] | None = None) -> int:
        seq = next(self._seq)
        with self._cond:
            self._pending = (seq, face, targets, time.perf_counter())
            self.stats["submitted"] += 1
            self._cond.notify_all()
        return seq

    def poll(self) -> RenderResult | None:
        with self._cond:
            r, self._result = self._result, None
            return r

    def wait(self, seq: int | None = None, timeout: float = 10.0) -> RenderResult | None:
        """Block (scripts/tests only) until a result at least as new as `seq` arrives; returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                r = self._result
                if r is not None and (seq is None or r.seq >= seq):
                    self._result = None
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        if self.client is not None:
            self.client.close()

    # ---- the background thread -----------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        """The sender thread ended on a fault of its own (see last_error): nothing more will be rendered."""
        return self.status == "failed"

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - never die silently: a poller sees status "failed"
            self.last_error = e
            self.status = "failed"
            with self._cond:
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
            disconnected = self.client is None or self.client.error is not None or self.client.closed
            if disconnected and not self._reconnect():
                with self._cond:
                    self._cond.wait(self.reconnect_interval)
                continue
            with self._cond:
                while not self._closed and (
                    self._pending is None or len(self._in_flight) >= self.max_in_flight
                ):
                    if self.client is None or self.client.error is not None:
                        break
                    self._cond.wait(0.5)
                if self._closed:
                    return
                job = self._pending if len(self._in_flight) < self.max_in_flight else None
                self._pending = None
            if job is None:
                continue
            try:
                self._send(job)
            except EngineConnectionError as e:
                self._lost(e, job)
            except EngineError as e:
                self._report(e)
            except Exception as e:  # noqa: BLE001 - a request that cannot be sent fails alone; the next is sent
                self._report(e)

    def _reconnect(self) -> bool:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.status = "connecting"
        try:
            client = self._connect()
        except Exception as e:  # noqa: BLE001 - whatever `connect` raises (no engine configured, ...): retry
            self.status = "disconnected"
            self.last_error = e
            return False
        with self._cond:
            self.client = client
            self._handles.clear()
            self._in_flight.clear()
            if self._ever_connected:
                self.stats["reconnects"] += 1
            self._ever_connected = True
            if (
                self._pending is None
                and self._last_sent is not None
                and self._result_seq() < self._last_sent[0]
            ):
                self._pending = self._last_sent  # re-send what was lost with the old connection
            self.status = "connected"
            self._cond.notify_all()
        return True

    def _result_seq(self) -> int:
        return self._best_seq

    def _face(self, face: Any) -> Any:
        if isinstance(face, str):
            return face
        if isinstance(face, Mapping):
            key = ("seed", int(face["seed"]), float(face.get("psi", 0.7)))
            if key not in self._handles:
                self._handles[key] = self.client.new_face(key[1], key[2])
            return self._handles[key]
        a = np.ascontiguousarray(face, dtype=np.float32)
        ws_key = ("ws", a.shape, hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest())
        if ws_key not in self._handles:
            self._handles[ws_key] = self.client.upload_latent(a)
        return self._handles[ws_key]

    def _send(self, job) -> None:
        seq, face, targets, t0 = job
        client = self.client
        handle = self._face(face)
        rest = face.get("rest") if isinstance(face, Mapping) and targets else None  # the rig's match (face_spec)

        def done(frame, err, seq=seq, t0=t0):
            self._on_reply(seq, t0, frame, err)

        with self._cond:
            self._last_sent = job
        pending = client.render_async(handle, targets, rest=rest, callback=done, **self.options)
        with self._cond:
            if not pending.finished:
                self._in_flight[seq] = pending
            self.stats["sent"] += 1

    def _on_reply(self, seq: int, t0: float, frame: P.Frame | None, err: BaseException | None) -> None:
        with self._cond:
            self._in_flight.pop(seq, None)
            if frame is not None and frame.header.get("ok"):
                self.stats["received"] += 1
                if seq > self._best_seq:
                    self._best_seq = seq
                    self._result = RenderResult(
                        seq, decode_image(frame), time.perf_counter() - t0, frame.header
                    )
                    if self.on_result is not None:
                        _call(self.on_result, self._result)
            elif frame is not None:
                code = (frame.header.get("error") or {}).get("code")
                if code == P.E_SUPERSEDED:
                    self.stats["superseded"] += 1
                else:
                    e = EngineError(
                        str(code), str((frame.header.get("error") or {}).get("message")), frame.header
                    )
                    self._report(e, locked=True)
            self._cond.notify_all()

    def _report(self, e: BaseException, locked: bool = False) -> None:
        self.last_error = e
        self.stats["errors"] += 1
        if self.on_error is not None:
            _call(self.on_error, e)

    def _lost(self, e: BaseException, job) -> None:
        with self._cond:
            self.last_error = e
            self.status = "disconnected"
            if self._pending is None:
                self._pending = job
        if self.client is not None:
            self.client.close()
            self.client = None
