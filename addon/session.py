"""Where the engine is: settings (from the add-on preferences, or given by scripts), the local engine the add-on
started, and connecting. Stdlib only (no bpy), so headless scripts and tests use it directly."""

from __future__ import annotations

import atexit
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .client import Client
from .engine_process import EngineStartError, LocalEngine, engine_command, serve_args


@dataclass
class EngineSettings:
    source: str = "CONNECT"  # CONNECT: a running engine at `address`; LOCAL: the engine this add-on started
    address: str = ""  # "host:port", "unix:PATH", a socket path or the JSON line `stylerig serve` printed
    token_file: str = ""
    stylerig_path: str = ""  # the `stylerig` executable of the engine's environment
    python_path: str = ""  # or the Python of that environment (runs -m stylerig_engine)
    generator: str = "synthetic"
    rignet: str = ""
    device: str = ""
    port: int = 0
    extra_args: str = ""
    oracle_fit: bool = False
    start_timeout: float = 180.0

    @classmethod
    def from_object(cls, obj: Any) -> EngineSettings:
        """From any object with (some of) these attributes, e.g. the add-on preferences."""
        kw = {f.name: getattr(obj, f.name) for f in fields(cls) if hasattr(obj, f.name)}
        return cls(**kw)


class NotConfigured(RuntimeError):
    pass


class Session:
    """The add-on's engine: a local child process (Start/Stop) or a configured address."""

    def __init__(self) -> None:
        self.local: LocalEngine | None = None
        self._atexit = False

    def address(self, s: EngineSettings) -> tuple[Any, str | None]:
        """(address, token file) to connect to under settings `s`."""
        if s.source == "LOCAL" or (not s.address and self.local is not None):
            if self.local is None or not self.local.running:
                raise NotConfigured("no local engine is running: start one (Preferences > StyleRig > Start engine)")
            return self.local.listen, None
        if not s.address:
            raise NotConfigured("no engine address: set one in the StyleRig preferences, or start a local engine")
        return s.address, (os.path.expanduser(s.token_file) if s.token_file else None)

    def connect(self, s: EngineSettings, *, timeout: float = 60.0, connect_timeout: float = 3.0) -> Client:
        address, token_file = self.address(s)
        return Client.connect(address, token_file=token_file, timeout=timeout, connect_timeout=connect_timeout,
                              client_name="stylerig-blender/1")

    def start_local(self, s: EngineSettings, *, log_path: str | os.PathLike | None = None) -> LocalEngine:
        if self.local is not None and self.local.running:
            return self.local
        log = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"stylerig-engine-{os.getpid()}.log"
        self.local = LocalEngine.start(
            engine_command(s.stylerig_path, s.python_path),
            serve_args(generator=s.generator, rignet=s.rignet, device=s.device, port=s.port, oracle_fit=s.oracle_fit,
                       token_file=s.token_file if s.source == "LOCAL" else "", extra=s.extra_args),
            timeout=s.start_timeout, log_path=log)
        if not self._atexit:  # never leave an engine (and its GPU memory) behind when Blender quits
            atexit.register(self.stop_local)
            self._atexit = True
        return self.local

    def stop_local(self) -> bool:
        engine, self.local = self.local, None
        if engine is None:
            return False
        engine.stop()
        return True


SESSION = Session()

__all__ = ["SESSION", "EngineSettings", "EngineStartError", "NotConfigured", "Session"]
