"""Starting and stopping a local engine (`stylerig serve`) as a child process; stdlib only (no bpy).

    engine = LocalEngine.start(["/path/to/stylerig"], generator="synthetic", rignet=None)
    client = Client.connect(engine.listen)      # the JSON line serve printed: address + token file
    engine.stop()                               # SIGTERM, then kill after a grace period: frees the GPU
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class EngineStartError(RuntimeError):
    pass


def engine_command(stylerig: str = "", python: str = "") -> list[str]:
    """The command that runs `stylerig`: the given executable, else `PYTHON -m stylerig_engine`, else a
    `stylerig` on PATH, else this interpreter's `-m stylerig_engine` (works inside the engine's own venv)."""
    if stylerig:
        return [os.path.expanduser(stylerig)]
    if python:
        return [os.path.expanduser(python), "-m", "stylerig_engine"]
    found = shutil.which("stylerig")
    if found:
        return [found]
    return [sys.executable, "-m", "stylerig_engine"]


def serve_args(*, generator: str = "synthetic", rignet: str = "", device: str = "", port: int = 0,
               token_file: str = "", oracle_fit: bool = False, extra: str | Sequence[str] = "") -> list[str]:
    args = ["serve", "--generator", generator or "synthetic", "--port", str(int(port))]
    if rignet:
        args += ["--rignet", os.path.expanduser(rignet)]
    if device:
        args += ["--device", device]
    if token_file:
        args += ["--token-file", os.path.expanduser(token_file)]
    if oracle_fit:
        args.append("--oracle-fit")
    args += shlex.split(extra) if isinstance(extra, str) else list(extra)
    return args


class LocalEngine:
    """A `stylerig serve` child process. `listen` is the JSON line it printed (host, port, unix, token_file)."""

    def __init__(self, proc: subprocess.Popen, listen: dict, log_path: Path | None):
        self.proc = proc
        self.listen = listen
        self.log_path = log_path

    @classmethod
    def start(cls, command: Sequence[str], args: Sequence[str], *, timeout: float = 180.0,
              log_path: str | os.PathLike | None = None, env: dict | None = None) -> LocalEngine:
        """Run `command + args`, wait for its listening line (up to `timeout` s: loading a generator takes a
        while). stderr goes to `log_path` (or is discarded)."""
        argv = [*command, *args]
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
        except OSError as e:
            raise EngineStartError(f"cannot run {shlex.join(argv)}: {e}") from e
        finally:
            if log_path:
                log.close()  # type: ignore[union-attr]
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        line = lines[0].strip() if lines else b""
        if not line:
            _terminate(proc, 5.0)
            tail = _tail(log_path)
            raise EngineStartError(f"the engine did not start ({shlex.join(argv)}; exit code {proc.returncode})"
                                   + (f":\n{tail}" if tail else ""))
        try:
            listen = json.loads(line)
        except ValueError:
            _terminate(proc, 5.0)
            raise EngineStartError(f"the engine printed {line[:200]!r} instead of its listening line") from None
        # keep draining stdout (the "stopped" line) so the child never blocks on a full pipe
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        return cls(proc, listen, Path(log_path) if log_path else None)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (the engine answers queued requests, closes, removes its token file), then SIGKILL after
        `grace` seconds. Returns the exit code."""
        return _terminate(self.proc, grace)

    def kill(self) -> None:
        """SIGKILL at once (tests: an engine that dies)."""
        if self.running:
            self.proc.kill()
            self.proc.wait(10)


def _terminate(proc: subprocess.Popen, grace: float) -> Any:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def _tail(path, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace").strip()
    except (OSError, TypeError):
        return ""
