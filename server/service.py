"""The engine server: sockets, authentication, request dispatch (docs/protocol.md).

Threads: one accept thread; per connection a reader (decode, validate, dispatch) and a writer (encode, send;
JPEG encoding happens here, off the device worker); one device worker (worker.py) for all torch work.

    server = EngineServer(engine, port=0, token_file=path)
    info = server.start()          # {"host", "port", "unix", "token_file", ...}
    server.wait()                  # until a `shutdown` request, or server.shutdown() from a signal handler
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import selectors
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Self, cast

from stylerig_addon import protocol as P

from stylerig_engine import __version__
from stylerig_engine.engine import FORMATS, MAX_SIZE, Engine, EngineError

from . import auth
from .requests import OPS, WORKER_OPS, Request, Spec, validate
from .worker import Worker, WorkerConfig

log = logging.getLogger("stylerig.server")
SERVER_NAME = f"stylerig-engine/{__version__}"


class Connection:
    """One client: a reader thread (the server's `_serve_connection`) and a writer thread with an outbox."""

    def __init__(self, server: EngineServer, sock: socket.socket, peer: Any, cid: int):
        self.server, self.sock, self.peer, self.id = server, sock, peer, cid
        self.cond = threading.Condition()
        self.outbox: collections.deque = collections.deque()
        self.closed = False  # no more sends; queued work is dropped
        self._close_after_flush = False
        self.authenticated = False
        self.admitted = time.monotonic()
        self.expired = False  # pending authentication, and evicted or past the hello deadline
        # Unauthenticated connections are capped per listener: the Unix socket (0600, owner only) never
        # competes with the TCP port, which every local user can reach.
        self.pool = "unix" if sock.family == getattr(socket, "AF_UNIX", None) else "tcp"
        self.writer = threading.Thread(
            target=self._write_loop, name=f"stylerig-conn{cid}-writer", daemon=True
        )

    # ---- sending (from any thread, never blocks) ------------------------------------------------------
    def send(self, header: dict, arrays: dict | None = None, encoder=None) -> bool:
        with self.cond:
            if self.closed or self._close_after_flush:
                return False
            self.outbox.append((header, arrays, encoder))
            self.cond.notify_all()
            return True

    def outbox_len(self) -> int:
        return len(self.outbox)

    def wait_outbox_below(self, n: int) -> None:
        with self.cond:
            while len(self.outbox) >= n and not self.closed:
                self.cond.wait(0.5)

    def _write_loop(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.outbox and not self.closed and not self._close_after_flush:
                        self.cond.wait()
                    if self.closed or not self.outbox:
                        break
                    header, arrays, encoder = self.outbox.popleft()
                if encoder is not None:
                    try:
                        arrays = encoder()
                    except Exception as e:  # noqa: BLE001 - reported to the client as an error reply
                        header = P.error_header(
                            P.E_INTERNAL, f"encoding failed: {type(e).__name__}: {e}", header.get("id")
                        )
                        arrays = None
                P.send_parts(self.sock, P.encode_parts(header, arrays))
                with self.cond:
                    self.cond.notify_all()
                self.server.worker.notify()  # flow control: a batch_render may run again
        except OSError:
            pass
        finally:
            self.abort()

    # ---- closing -------------------------------------------------------------------------------------
    def close_after_flush(self) -> None:
        with self.cond:
            self._close_after_flush = True
            self.cond.notify_all()

    def abort(self) -> None:
        """Stop everything now: drop the outbox, unblock both threads (the reader closes the socket)."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.outbox.clear()
            self.cond.notify_all()
        self.server.worker.drop_connection(self)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class EngineServer:
    def __init__(
        self,
        engine: Engine,
        *,
        host: str = "127.0.0.1",
        port: int | None = 0,
        unix_path: str | os.PathLike | None = None,
        token: str | None = None,
        token_file: str | os.PathLike | None = None,
        limits: P.Limits | None = None,
        max_connections: int = 64,
        max_unauthenticated: int = 16,
        auth_timeout: float = 5.0,
        max_outbox: int = 64,
        worker_config: WorkerConfig | None = None,
    ):
        self.engine = engine
        self.host, self.port = host, port
        self.unix_path = Path(unix_path) if unix_path is not None else None
        self.token = token or auth.new_token()
        self.token_file = Path(token_file) if token_file is not None else None
        self.limits = limits or P.Limits(max_header=1 << 20, max_payload=256 << 20)
        self.max_connections = max_connections
        self.max_unauthenticated = max(1, int(max_unauthenticated))
        self.auth_timeout = auth_timeout
        self.max_outbox = max_outbox
        config = worker_config or WorkerConfig(max_batch=engine.max_batch)
        self.worker = Worker(engine, config)
        self.spec = Spec(
            num_ws=engine.num_ws,
            w_dim=engine.w_dim,
            dim=engine.layout.dim,
            resolution=engine.resolution,
            max_size=MAX_SIZE,
        )
        self._listeners: list[socket.socket] = []
        self._connections: dict[int, tuple[Connection, threading.Thread]] = {}
        self._pending: dict[int, Connection] = {}  # not yet authenticated, oldest first (under _conn_lock)
        self.accepted = 0  # connections accepted so far
        self._conn_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopped = threading.Event()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="stylerig-accept", daemon=True)
        self._geometry_cache: dict[tuple, tuple[dict, dict]] = {}
        self._geometry_lock = threading.Lock()  # connection threads share the cache
        self.listen_info: dict = {}

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> dict:
        try:
            if self.port is not None:
                tcp = socket.create_server((self.host, self.port), reuse_port=False)
                self._listeners.append(tcp)
                self.port = tcp.getsockname()[1]
            if self.unix_path is not None:
                self._listeners.append(self._bind_unix(self.unix_path))
        except BaseException:
            for s in self._listeners:
                s.close()
            self._listeners.clear()
            raise
        if not self._listeners:
            raise ValueError("nothing to listen on: give a TCP port or a Unix socket path")
        for s in self._listeners:
            s.setblocking(False)
        if self.token_file is not None:
            auth.write_token_file(self.token_file, self.token)
        self.worker.start()
        self._accept_thread.start()
        self.listen_info = {
            "event": "listening",
            "server": SERVER_NAME,
            "protocol": P.VERSION,
            "pid": os.getpid(),
            "host": self.host if self.port is not None else None,
            "port": self.port,
            "unix": str(self.unix_path) if self.unix_path is not None else None,
            "token_file": str(self.token_file) if self.token_file is not None else None,
        }
        log.info("listening: %s", self.listen_info)
        return self.listen_info

    @staticmethod
    def _bind_unix(path: Path) -> socket.socket:
        if len(os.fsencode(path)) > 100:
            raise ValueError(f"Unix socket path too long ({len(os.fsencode(path))} bytes): {path}")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise FileExistsError(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale socket of a dead engine
            else:
                raise OSError(f"another engine is listening on {path}")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.listen(64)
        return s

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def __enter__(self) -> Self:
        if not self._accept_thread.is_alive() and not self.stopped:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self, flush_timeout: float = 2.0) -> None:
        """Stop accepting, answer queued requests 'shutting_down', flush replies, close everything.
        Idempotent;
        safe from any thread (signal handlers: call it from a thread, it blocks)."""
        if self._stopping.is_set():
            self._stopped.wait(10)
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._accept_thread.is_alive():
            self._accept_thread.join(timeout=5)
        self.worker.stop()
        self.worker.join(timeout=30)
        with self._conn_lock:
            conns = list(self._connections.values())
        for conn, _ in conns:
            conn.close_after_flush()
        deadline = time.monotonic() + flush_timeout
        for conn, _ in conns:
            conn.writer.join(timeout=max(0.0, deadline - time.monotonic()))
            conn.abort()
        for _, reader in conns:
            reader.join(timeout=5)
        for s in self._listeners:
            with contextlib.suppress(OSError):
                s.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(self.unix_path.lstat().st_mode):
                    self.unix_path.unlink()
        if self.token_file is not None:
            auth.remove_token_file(self.token_file, self.token)
        self._wake_r.close()
        self._wake_w.close()
        log.info("stopped")
        self._stopped.set()

    # ---- accepting -----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        for s in self._listeners:
            sel.register(s, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                self._expire_pending()
                for key, _ in sel.select(timeout=min(0.25, self.auth_timeout / 4)):
                    if key.fileobj is self._wake_r or self._stopping.is_set():
                        return
                    listener = cast(socket.socket, key.fileobj)  # the listeners registered above
                    try:
                        sock, peer = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        log.warning("accept failed: %s", e)
                        continue
                    self._admit(sock, peer)
        finally:
            sel.close()

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        """Start serving a new connection. It does not count against max_connections until it has
        authenticated: waiting connections have their own cap per listener (max_unauthenticated) and a deadline
        (auth_timeout), and a newcomer over the cap evicts the longest-waiting one. So idle sockets opened by
        other local users on the TCP port can neither take the owner's slots nor keep the owner out for long;
        the owner's client sends its hello at once and is authenticated within milliseconds."""
        sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(self, sock, peer, next(self._ids))
        reader = threading.Thread(
            target=self._serve_connection, args=(conn,), name=f"stylerig-conn{conn.id}-reader", daemon=True
        )
        with self._conn_lock:
            waiting = [c for c in self._pending.values() if c.pool == conn.pool]
            evicted = waiting[: max(0, len(waiting) - self.max_unauthenticated + 1)]
            for old in evicted:
                self._pending.pop(old.id, None)
                old.expired = True
            self._connections[conn.id] = (conn, reader)
            self._pending[conn.id] = conn
            self.accepted += 1
        for old in evicted:
            log.warning("connection %s from %s: evicted before authenticating", old.id, old.peer)
            self._refuse_pending(
                old, f"too many connections waiting to authenticate ({self.max_unauthenticated})"
            )
        conn.writer.start()
        reader.start()

    def _expire_pending(self) -> None:
        """Close connections that have not authenticated within auth_timeout (a total deadline, however
        slowly the bytes trickle in)."""
        now = time.monotonic()
        with self._conn_lock:
            late = [c for c in self._pending.values() if now - c.admitted > self.auth_timeout]
            for c in late:
                self._pending.pop(c.id, None)
                c.expired = True
        for c in late:
            self._refuse_pending(c, f"no hello within {self.auth_timeout:g} s")

    @staticmethod
    def _refuse_pending(conn: Connection, message: str) -> None:
        """Answer a waiting connection `unauthorized` (null id) and stop reading it; its reader then ends it."""
        conn.send(P.error_header(P.E_UNAUTHORIZED, message))
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RD)

    # ---- one connection ------------------------------------------------------------------------------
    def _serve_connection(self, conn: Connection) -> None:
        stream = conn.sock.makefile("rb", buffering=1 << 16)
        try:
            if not self._authenticate(conn, stream):
                conn.close_after_flush()
                conn.writer.join(timeout=5)
                return
            while not conn.closed:
                conn.wait_outbox_below(self.max_outbox)  # a client that does not read stops being read
                try:
                    frame = P.read_frame(stream, self.limits)
                except P.ConnectionLost:
                    break
                except P.ProtocolError as e:
                    conn.send(P.error_header(e.code, e.message, e.request_id))
                    if e.fatal:
                        conn.close_after_flush()
                        conn.writer.join(timeout=5)
                        break
                    continue
                self._handle_frame(conn, frame)
        except (OSError, ValueError):
            pass  # socket shut down under us (abort, shutdown) or reset by the peer
        finally:
            conn.abort()
            conn.writer.join(timeout=5)
            with contextlib.suppress(OSError):
                stream.close()
            with contextlib.suppress(OSError):
                conn.sock.close()
            with self._conn_lock:
                self._connections.pop(conn.id, None)
                self._pending.pop(conn.id, None)

    def _authenticate(self, conn: Connection, stream) -> bool:
        conn.sock.settimeout(self.auth_timeout)
        try:
            frame = P.read_frame(stream, P.Limits(max_header=64 << 10, max_payload=0))
        except TimeoutError:
            if not conn.expired:
                conn.send(P.error_header(P.E_UNAUTHORIZED, f"no hello within {self.auth_timeout:g} s"))
            return False
        except (P.ConnectionLost, OSError):
            return False  # closed by the peer, or evicted / past the deadline (already answered)
        except P.ProtocolError as e:
            if conn.expired:
                return False
            code = e.code if e.fatal else P.E_UNAUTHORIZED
            conn.send(
                P.error_header(
                    code, f"the first frame must be a hello with the token ({e.message})", e.request_id
                )
            )
            return False
        rid = frame.header.get("id") if isinstance(frame.header.get("id"), (int, str)) else None
        if frame.header.get("op") != "hello":
            conn.send(
                P.error_header(P.E_UNAUTHORIZED, "the first request must be 'hello' with the token", rid)
            )
            return False
        if not auth.tokens_equal(frame.header.get("token"), self.token):
            log.warning("connection %s from %s: wrong token", conn.id, conn.peer)
            conn.send(P.error_header(P.E_UNAUTHORIZED, "wrong or missing token", rid))
            return False
        try:
            req = validate(frame.header, frame.arrays, self.spec)
        except P.ProtocolError as e:
            conn.send(P.error_header(e.code, e.message, rid))
            return False
        if req.fields["protocol"] != P.VERSION:
            conn.send(
                P.error_header(
                    P.E_UNSUPPORTED_VERSION,
                    f"protocol {req.fields['protocol']} is not supported; this engine speaks {P.VERSION}",
                    rid,
                )
            )
            return False
        with self._conn_lock:
            if conn.expired:  # the deadline passed or a newcomer evicted it while the hello was checked
                return False
            self._pending.pop(conn.id, None)
            authenticated = sum(c.authenticated for c, _ in self._connections.values())
            if authenticated < self.max_connections:
                conn.authenticated = True
        if not conn.authenticated:
            conn.send(P.error_header(P.E_BUSY, f"too many connections ({self.max_connections})", rid))
            return False
        conn.sock.settimeout(None)
        conn.send(
            {
                "id": req.id,
                "ok": True,
                "final": True,
                "op": "hello",
                "protocol": P.VERSION,
                "server": SERVER_NAME,
                "session": conn.id,
                "capabilities": self.capabilities(),
            }
        )
        return True

    def capabilities(self) -> dict:
        e = self.engine
        return {
            "ops": list(OPS),
            "formats": list(FORMATS),
            "max_header": self.limits.max_header,
            "max_payload": self.limits.max_payload,
            "max_batch": self.worker.config.max_batch,
            "max_size": MAX_SIZE,
            "fit": e.fit_fn is not None,
            "edit_modes": list(e.edit_modes),
            "resolution": e.resolution,
            "num_ws": e.num_ws,
            "w_dim": e.w_dim,
            "param_dim": e.layout.dim,
        }

    def _handle_frame(self, conn: Connection, frame: P.Frame) -> None:
        try:
            req = validate(frame.header, frame.arrays, self.spec)
        except P.ProtocolError as e:
            conn.send(P.error_header(e.code, e.message, e.request_id))
            return
        try:
            if req.op in WORKER_OPS:
                self.worker.submit(conn, req)
            else:
                self._quick(conn, req)
        except P.ProtocolError as e:
            conn.send(P.error_header(e.code, e.message, req.id))
        except EngineError as e:
            conn.send(P.error_header(e.code, str(e), req.id))
        except Exception as e:  # never let one request take the connection (or the server) down
            log.exception("request %s failed", req.op)
            conn.send(P.error_header(P.E_INTERNAL, f"{req.op} failed: {type(e).__name__}: {e}", req.id))

    def _quick(self, conn: Connection, req: Request) -> None:
        """Operations answered on the connection thread (no generator work)."""
        ok = {"id": req.id, "ok": True, "final": True, "op": req.op}
        e, f = self.engine, req.fields
        if req.op == "ping":
            conn.send({**ok, "time": time.time()})
        elif req.op == "hello":
            conn.send(P.error_header(P.E_BAD_REQUEST, "already authenticated", req.id))
        elif req.op == "info":
            info = {
                **e.info(),
                "server": SERVER_NAME,
                "protocol": P.VERSION,
                "capabilities": self.capabilities(),
            }
            conn.send({**ok, "info": info})
        elif req.op == "stats":
            with self._conn_lock:
                n = sum(c.authenticated for c, _ in self._connections.values())
                waiting = len(self._pending)
            conn.send({**ok, "stats": {**self.worker.stats(), "connections": n, "unauthenticated": waiting}})
        elif req.op == "geometry":  # numpy arrays of the face model: no torch work
            key = (f["identity_modes"], f["half"])
            with self._geometry_lock:
                cached = self._geometry_cache.get(key)
            if cached is None:
                cached = e.geometry(identity_modes=f["identity_modes"], half=f["half"])
                with self._geometry_lock:
                    if len(self._geometry_cache) >= 4:  # a few variants; never grow without bound
                        self._geometry_cache.pop(next(iter(self._geometry_cache)))
                    self._geometry_cache[key] = cached
            meta, arrays = cached
            conn.send({**ok, "geometry": meta}, arrays)
        elif req.op == "release":
            conn.send({**ok, "released": e.release(f["handles"])})
        elif req.op == "cancel":
            conn.send({**ok, "cancelled": self.worker.cancel(conn, f["request"])})
        elif req.op == "shutdown":
            log.info("shutdown requested by connection %s", conn.id)
            conn.send(ok)
            threading.Thread(target=self.shutdown, name="stylerig-shutdown", daemon=True).start()
        else:  # pragma: no cover - validate() only lets known operations through
            conn.send(P.error_header(P.E_UNKNOWN_OP, f"unknown operation {req.op!r}", req.id))


def default_paths(pid: int | None = None) -> tuple[Path, Path | None]:
    """(token file, Unix socket path or None) in the private runtime directory."""
    pid = os.getpid() if pid is None else pid
    d = auth.runtime_dir()
    sock: Path | None = d / f"engine-{pid}.sock"
    if not hasattr(socket, "AF_UNIX") or len(os.fsencode(str(sock))) > 100:
        sock = None
    return d / f"engine-{pid}.token", sock
