"""`stylerig serve` as a real process: the listen line, the token file, SIGTERM/SIGINT, shutdown requests."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from stylerig_addon.client import Client, EngineConnectionError

TESTS = Path(__file__).parent


def start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stylerig_engine",
            "serve",
            "--generator",
            "py:test_server_engine:make_generator",
            "--device",
            "cpu",
            "--token-file",
            str(tmp_path / "run" / "token"),
            "--unix",
            str(tmp_path / "e.sock"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"serve printed nothing; stderr:\n{proc.stderr.read()}")
    return proc, json.loads(line)


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"serve did not stop; stderr:\n{err}") from None
    return out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_where_it_listens_and_stops_on_signals(tmp_path, sig):
    proc, info = start(tmp_path)
    try:
        assert info["event"] == "listening" and info["host"] == "127.0.0.1" and info["pid"] == proc.pid
        token_file = Path(info["token_file"])
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        with Client.connect(info) as c:  # prefers the Unix socket
            assert c.sock.family.name == "AF_UNIX"
            h = c.new_face(1)
            assert c.render(h, size=32).shape == (32, 32, 4)
        with Client.connect(("127.0.0.1", info["port"]), token_file=token_file) as c:
            assert c.ping() > 0
        proc.send_signal(sig)
        out, err = stop(proc)
        assert proc.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == {"event": "stopped"}
        assert not token_file.exists() and not Path(info["unix"]).exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_stops_on_a_shutdown_request(tmp_path):
    proc, info = start(tmp_path, "--no-unix")
    try:
        assert info["unix"] is None
        c = Client.connect(info)
        c.shutdown()
        stop(proc)
        assert proc.returncode == 0
        with pytest.raises(EngineConnectionError):
            c.ping()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_reports_a_bad_generator(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "stylerig_engine",
            "serve",
            "--generator",
            "py:test_server_engine:make_generator",
            "--rignet",
            str(tmp_path),
            "--token-file",
            str(tmp_path / "t"),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 1 and "no dfr.safetensors" in res.stderr
    assert not (tmp_path / "t").exists()
