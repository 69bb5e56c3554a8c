"""The `stylerig` command ends every failure with one clear line on stderr and a non-zero exit, never a traceback:
no network, missing or corrupt files, wrong specs, a rig trained for another generator."""

from __future__ import annotations

import shutil
import socket

import pytest

from stylerig_engine.cli import main


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def test_fetch_without_network_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLERIG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STYLERIG_STYLEGAN2_BASE_URL", f"http://127.0.0.1:{closed_port()}/")
    code, err = run(capsys, "weights", "fetch", "ffhq-256", "--accept-license")
    assert code == 1
    assert err[-1].startswith("stylerig weights fetch: error: download of http://127.0.0.1:")
    assert not any("Traceback" in line for line in err)


@pytest.fixture
def corrupt_rig(tmp_path):
    from stylerig_engine.rig import SHIPPED_RIG

    d = tmp_path / "rig"
    shutil.copytree(SHIPPED_RIG, d)
    (d / "dfr.safetensors").write_bytes(b"\0" * 100)
    return d


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["generate", "--generator", "{tmp}/missing.pkl", "--seeds", "0", "--out", "{tmp}/out"], "no such file"),
        (["generate", "--generator", "random:64:16", "--seeds", "0", "--out", "{tmp}/out"], "CHANNEL_BASE"),
        (["rig", "stamp", "{tmp}", "--generator", "random:16"], "no dfr.safetensors"),
        (["rig", "stamp", "{rig}", "--generator", "random:16"], "not a safetensors file"),
        (["evaluate", "--rig", "{tmp}/nowhere"], "no dfr.safetensors"),
        (["serve", "--generator", "synthetic:abc"], "synthetic:RESOLUTION"),
        (["serve", "--generator", "random:16", "--rignet", "{rig}"], "not a safetensors file"),
        (["serve", "--generator", "random:1024:1024", "--rignet", "shipped"], "W+ 14 x 512"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path, corrupt_rig, argv, expect):
    argv = [a.format(tmp=tmp_path, rig=corrupt_rig) for a in argv]
    code, err = run(capsys, *argv)
    assert code in (1, 2), err
    assert expect in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_a_bug_is_still_one_line_with_the_way_to_the_traceback(capsys, monkeypatch):
    from stylerig_engine.rig import commands

    def broken(args):
        raise KeyError("surprise")

    monkeypatch.setattr(commands, "_stamp", broken)
    code, err = run(capsys, "rig", "stamp", "x", "--generator", "random:16")
    assert code == 1
    assert err == [
        "stylerig rig stamp: internal error: KeyError: 'surprise' (set STYLERIG_TRACEBACK=1 for the traceback)"
    ]
    monkeypatch.setenv("STYLERIG_TRACEBACK", "1")
    with pytest.raises(KeyError):
        main(["rig", "stamp", "x", "--generator", "random:16"])
