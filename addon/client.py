"""Client library for the stylerig engine server: stdlib + numpy only (runs in Blender's Python, no bpy).

Blocking API for scripts:

    from stylerig_addon.client import Client
    with Client.connect(listen_line) as c:            # the JSON line `stylerig serve` prints (or an address)
        h = c.new_face(seed=3, psi=0.7)
        p = c.fit(h)                                   # the face's own parameters (needs a DFR)
        img = c.render(h, {"pose": p}, size=256)       # (256, 256, 4) uint8, row 0 = top
        for frame in c.batch_render(h, {"expression": P}, size=512, format="jpeg"):
            save(frame.frame, frame.image)

Background, latest-wins streaming for an interactive viewport lives in streaming.py (StreamingRenderer).

Thread-safe: one background reader thread per connection routes replies to their requests by id, so several
threads may issue requests at once on one Client (they are pipelined).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from . import protocol as P

CLIENT_NAME = "stylerig-client/1"
_CLOSED = object()


class EngineError(Exception):
    """The engine answered a request with an error (`code` is one of protocol.E_*)."""

    def __init__(self, code: str, message: str, header: dict | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.header = code, message, header or {}


class EngineConnectionError(EngineError, ConnectionError):
    """The connection to the engine is gone (or could not be made)."""

    def __init__(self, message: str):
        super().__init__("connection", message)


# ---- addresses -----------------------------------------------------------------------------------------
def parse_address(address: Any) -> tuple[str, Any]:
    """("tcp", (host, port)) or ("unix", path) from: a listen-line dict/JSON string, (host, port),
    "host:port",
    "unix:PATH" or a filesystem path."""
    if isinstance(address, str) and address.lstrip().startswith("{"):
        address = json.loads(address)
    if isinstance(address, Mapping):
        if address.get("unix") and hasattr(socket, "AF_UNIX") and os.path.exists(address["unix"]):
            return "unix", address["unix"]
        return "tcp", (address.get("host", "127.0.0.1"), int(address["port"]))
    if isinstance(address, (tuple, list)) and len(address) == 2:
        return "tcp", (str(address[0]), int(address[1]))
    if isinstance(address, (str, os.PathLike)):
        s = os.fspath(address)
        if s.startswith("unix:"):
            return "unix", s[5:]
        host, sep, port = s.rpartition(":")
        if sep and port.isdigit() and "/" not in s:
            return "tcp", (host or "127.0.0.1", int(port))
        return "unix", s
    raise ValueError(f"cannot make an engine address of {address!r}")


def read_token(path: str | os.PathLike) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


@dataclass
class Frame:
    """One streamed frame of batch_render."""

    frame: int  # the client's frame id (frame_ids[index])
    index: int  # position in the batch
    done: int
    total: int
    image: Any  # ndarray (S, S, 4) uint8/float16, or JPEG bytes
    header: dict = field(repr=False, default_factory=dict)


class Pending:
    """A request in flight: its replies arrive on `replies` (protocol.Frame items, _CLOSED at the end)."""

    def __init__(self, request_id: int, op: str):
        self.id, self.op = request_id, op
        self.replies: queue.Queue = queue.Queue()
        self.sent_at = time.perf_counter()
        self.callbacks: list[Callable[[P.Frame | None, BaseException | None], None]] = []
        self.finished = False

    def result(self, timeout: float | None = None) -> P.Frame:
        """The final reply (earlier, non-final ones are skipped); raises EngineError on an error reply."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self.replies.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"no reply to {self.op} #{self.id} within {timeout} s") from None
            frame = _check(item)
            if P.is_final(frame.header):
                return frame

    def __iter__(self) -> Iterator[P.Frame]:
        """Every reply up to and including the final one."""
        while True:
            frame = _check(self.replies.get())
            yield frame
            if P.is_final(frame.header):
                return


def _check(item: Any) -> P.Frame:
    if item is _CLOSED or isinstance(item, BaseException):
        if isinstance(item, EngineError):
            raise item
        raise EngineConnectionError(
            f"connection to the engine lost ({item if item is not _CLOSED else 'closed'})"
        )
    h = item.header
    if not h.get("ok", False):
        err = h.get("error") or {}
        raise EngineError(str(err.get("code", "error")), str(err.get("message", "")), h)
    return item


class Client:
    """One authenticated connection to the engine."""

    def __init__(
        self,
        sock: socket.socket,
        token: str,
        *,
        timeout: float = 60.0,
        client_name: str = CLIENT_NAME,
        limits: P.Limits | None = None,
    ):
        self.sock = sock
        self.timeout = timeout
        self.limits = limits or P.Limits(max_header=64 << 20, max_payload=4 << 30)
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed = False
        self.error: BaseException | None = None
        self._stream = sock.makefile("rb", buffering=1 << 16)
        self._reader = threading.Thread(target=self._read_loop, name="stylerig-client-reader", daemon=True)
        self._reader.start()
        self.hello = self.request("hello", token=token, protocol=P.VERSION, client=client_name).header
        self.capabilities = self.hello.get("capabilities", {})

    # ---- connecting ----------------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        address: Any,
        token: str | None = None,
        *,
        token_file: str | os.PathLike | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        **kwargs,
    ) -> Client:
        """Connect and authenticate. `address`: the server's listen line (dict or JSON, which also names the
        token file), (host, port), "host:port", "unix:PATH" or a socket path."""
        if isinstance(address, str) and address.lstrip().startswith("{"):
            address = json.loads(address)
        if token is None:
            token_file = token_file or (address.get("token_file") if isinstance(address, Mapping) else None)
            if token_file is None:
                raise ValueError("give the engine's token or token_file")
            token = read_token(token_file)
        kind, where = parse_address(address)
        try:
            if kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(connect_timeout)
                sock.connect(where)
            else:
                sock = socket.create_connection(where, timeout=connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            raise EngineConnectionError(f"cannot connect to the engine at {where}: {e}") from e
        sock.settimeout(None)
        try:
            return cls(sock, token, timeout=timeout, **kwargs)
        except BaseException:
            sock.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)
        self._fail_all(EngineConnectionError("client closed"))

    # ---- plumbing ------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        err: BaseException = EngineConnectionError("connection closed by the engine")
        try:
            while True:
                try:
                    frame = P.read_frame(self._stream, self.limits)
                except P.ProtocolError as e:
                    if e.fatal:
                        raise
                    self._dispatch_error(e)
                    continue
                self._dispatch(frame)
        except P.ConnectionLost as e:
            err = EngineConnectionError(f"connection closed by the engine ({e})")
        except (OSError, ValueError) as e:
            err = EngineConnectionError(f"connection to the engine failed: {e}")
        except P.ProtocolError as e:
            err = EngineConnectionError(f"engine sent a bad frame: {e}")
        self.error = err
        self._fail_all(err)

    def _dispatch(self, frame: P.Frame) -> None:
        rid = frame.header.get("id")
        final = P.is_final(frame.header)
        with self._lock:
            pending = self._pending.get(rid) if isinstance(rid, int) else None
            if pending is not None and final:
                del self._pending[rid]
                pending.finished = True
        if pending is None:
            if rid is None and not frame.header.get("ok", True):
                # an error the engine could not tie to a request (e.g. framing lost): fail everything
                err = frame.header.get("error") or {}
                self._fail_all(EngineError(str(err.get("code")), str(err.get("message")), frame.header))
            return
        pending.replies.put(frame)
        if final:
            for cb in pending.callbacks:
                _call(cb, frame, None)

    def _dispatch_error(self, e: P.ProtocolError) -> None:
        frame = P.Frame(P.error_header(e.code, e.message, e.request_id))
        self._dispatch(frame)

    def _fail_all(self, err: BaseException) -> None:
        with self._lock:
            pendings = list(self._pending.values())
            self._pending.clear()
        for p in pendings:
            p.finished = True
            p.replies.put(err)
            for cb in p.callbacks:
                _call(cb, None, err)

    def submit(
        self,
        op: str,
        arrays: Mapping[str, Any] | None = None,
        *,
        callback: Callable[[P.Frame | None, BaseException | None], None] | None = None,
        **fields,
    ) -> Pending:
        """Send a request without waiting; the returned Pending collects its replies. `callback(frame, error)`
        runs on the reader thread when the final reply (or a connection failure) arrives."""
        if self._closed or self.error is not None:
            raise EngineConnectionError(f"not connected ({self.error or 'closed'})")
        rid = next(self._ids)
        pending = Pending(rid, op)
        if callback is not None:
            pending.callbacks.append(callback)
        header = {"op": op, "id": rid, **{k: v for k, v in fields.items() if v is not None}}
        parts = P.encode_parts(header, arrays)
        with self._lock:
            self._pending[rid] = pending
        try:
            with self._send_lock:
                P.send_parts(self.sock, parts)
        except OSError as e:
            with self._lock:
                self._pending.pop(rid, None)
            raise EngineConnectionError(f"cannot send to the engine: {e}") from e
        return pending

    def request(
        self, op: str, arrays: Mapping[str, Any] | None = None, *, timeout: float | None = None, **fields
    ) -> P.Frame:
        """Send a request and wait for its final reply; EngineError on an error reply."""
        return self.submit(op, arrays, **fields).result(self.timeout if timeout is None else timeout)

    # ---- operations ----------------------------------------------------------------------------------
    def ping(self) -> float:
        """Round-trip time in seconds of an empty request."""
        t = time.perf_counter()
        self.request("ping")
        return time.perf_counter() - t

    def info(self) -> dict:
        return self.request("info").header["info"]

    def stats(self) -> dict:
        return self.request("stats").header["stats"]

    def geometry(
        self, identity_modes: int | None = None, half: bool = False
    ) -> tuple[dict, dict[str, np.ndarray]]:
        f = self.request("geometry", identity_modes=identity_modes, half=half or None)
        return f.header["geometry"], f.arrays

    def new_face(self, seed: int, psi: float = 0.7) -> str:
        return self.request("new_face", seed=int(seed), psi=float(psi)).header["handle"]

    def new_faces(self, seeds: Sequence[int], psi: float = 0.7) -> list[str]:
        return self.request("new_face", seeds=[int(s) for s in seeds], psi=float(psi)).header["handles"]

    def upload_latent(self, ws: np.ndarray) -> str:
        return self.request("upload_latent", {"ws": np.asarray(ws, np.float32)}).header["handle"]

    def get_latent(self, handle: str) -> np.ndarray:
        return np.array(self.request("get_latent", handle=handle).arrays["ws"])

    def release(self, handles: str | Sequence[str]) -> int:
        handles = [handles] if isinstance(handles, str) else list(handles)
        return self.request("release", handles=handles).header["released"]

    def fit(self, handle: str | Sequence[str], *, final_quality: bool = False,
            timeout: float | None = None) -> np.ndarray:
        """(D,) parameters of one face, or (B, D) for a list of handles. final_quality: the DFR's reading refined
        by a per-image fit (seconds per face; wait up to `timeout` s, default the client's)."""
        faces = {"handle": handle} if isinstance(handle, str) else {"handles": list(handle)}
        return np.array(self.request("fit", timeout=timeout, final_quality=final_quality or None, **faces).arrays["p"])

    @staticmethod
    def _face_fields(face: Any, arrays: dict) -> dict:
        if isinstance(face, str):
            return {"handle": face}
        if isinstance(face, (list, tuple)) and face and all(isinstance(h, str) for h in face):
            return {"handles": list(face)}
        arrays["ws"] = np.asarray(face, np.float32)
        return {}

    @staticmethod
    def _target_arrays(targets: Mapping[str, Any] | None, rest: Any = None) -> dict:
        arrays = {f"target/{m}": np.asarray(p, np.float32) for m, p in (targets or {}).items()}
        if rest is not None:
            arrays["rest"] = np.asarray(rest, np.float32)
        return arrays

    def render_async(
        self,
        face: Any,
        targets: Mapping[str, Any] | None = None,
        *,
        size: int | None = None,
        format: str = "rgba8",
        quality: int | None = None,
        origin: str | None = None,
        colorspace: str | None = None,
        slot: str | None = None,
        timeout: float | None = None,
        rest: Any = None,
        callback=None,
    ) -> Pending:
        arrays = self._target_arrays(targets, rest)
        fields = self._face_fields(face, arrays)
        return self.submit(
            "render",
            arrays,
            callback=callback,
            size=size,
            format=format,
            quality=quality,
            origin=origin,
            colorspace=colorspace,
            slot=slot,
            timeout=timeout,
            **fields,
        )

    def render(self, face: Any, targets: Mapping[str, Any] | None = None, **kwargs) -> Any:
        """One image of `face` (handle or W+/W latent) under `targets` {mode: p (D,)}: (S, S, 4) uint8
        ("rgba8"), float16 ("float16") or JPEG bytes ("jpeg"). `rest=` (D,): the parameters the rig was matched
        to; the engine finds the expression keys against them (docs/protocol.md)."""
        wait = kwargs.pop("wait", None)
        frame = self.render_async(face, targets, **kwargs).result(self.timeout if wait is None else wait)
        return decode_image(frame)

    def batch_render(
        self,
        face: Any,
        targets: Mapping[str, Any] | None = None,
        *,
        size: int | None = None,
        format: str = "rgba8",
        quality: int | None = None,
        origin: str | None = None,
        colorspace: str | None = None,
        frame_ids: Sequence[int] | None = None,
        count: int | None = None,
        timeout: float | None = None,
        on_start: Callable[[int], None] | None = None,
        final_quality: bool = False,
        rest: Any = None,
    ) -> Iterator[Frame]:
        """Render a sequence: face is one handle, a list of N handles or (N, num_ws, w_dim) latents; targets
        {mode: (N, D)}. Yields Frames in order as they arrive. Leaving the loop early cancels the rest.
        `on_start(request_id)` is called once the request is sent (e.g. to cancel it from another thread).
        final_quality: closed-loop editing, seconds per frame (docs/protocol.md). rest: (D,) or (N, D), as
        render's."""
        arrays = self._target_arrays(targets, rest)
        fields = self._face_fields(face, arrays)
        pending = self.submit(
            "batch_render",
            arrays,
            size=size,
            format=format,
            quality=quality,
            origin=origin,
            colorspace=colorspace,
            timeout=timeout,
            count=count,
            frame_ids=None if frame_ids is None else [int(f) for f in frame_ids],
            final_quality=final_quality or None,
            **fields,
        )
        if on_start is not None:
            on_start(pending.id)
        finished = False
        try:
            for f in pending:
                h = f.header
                if h.get("event") == "frame":
                    yield Frame(
                        int(h["frame"]), int(h["index"]), int(h["done"]), int(h["total"]), decode_image(f), h
                    )
                if P.is_final(h):
                    finished = True
        finally:
            if not finished and not pending.finished and not self._closed and self.error is None:
                try:
                    self.cancel(pending.id)
                except EngineError:
                    pass

    def cancel(self, request_id: int) -> bool:
        """Cancel a queued render or a running batch_render; True when something was cancelled."""
        return bool(self.request("cancel", request=request_id).header.get("cancelled"))

    def shutdown(self) -> None:
        """Ask the engine to stop (it answers first)."""
        self.request("shutdown")


def decode_image(frame: P.Frame) -> Any:
    if "jpeg" in frame.arrays:
        return frame.arrays["jpeg"].tobytes()
    return frame.arrays["image"]


def _call(cb, *args) -> None:
    try:
        cb(*args)
    except Exception:  # noqa: BLE001 - a caller's callback must never kill the reader thread
        import traceback

        traceback.print_exc()


def __getattr__(name: str) -> Any:
    """StreamingRenderer and RenderResult moved to streaming.py; this keeps `from .client import ...` working."""
    if name in ("StreamingRenderer", "RenderResult"):
        from . import streaming

        return getattr(streaming, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
