"""`stylerig weights fetch`: license, resumable download from a local server, validation, SHA-256 records."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from range_server import send_with_range
from test_stylegan2_loaders import FakeNvidiaModules, same_outputs, tiny_generator, write_nvidia_pickle

from stylerig_engine.cli import main
from stylerig_engine.stylegan2 import weights as wmod

FILENAME = "stylegan2-ffhq-256x256.pkl"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        send_with_range(self, data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/files/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLERIG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(wmod.BASE_URL_ENV, raising=False)
    return tmp_path / "cache"


@pytest.fixture
def served_network(tmp_path, monkeypatch, server):
    """A small 256-pixel generator in NVIDIA's pickle format, served as stylegan2-ffhq-256x256.pkl."""
    fake = FakeNvidiaModules(monkeypatch)
    G = tiny_generator(res=256, channel_base=256, channel_max=16, conv_clamp=256)
    data = write_nvidia_pickle(tmp_path / "net.pkl", fake, G).read_bytes()
    server.files["/files/" + FILENAME] = data
    return G, data


def test_license_is_shown_and_nothing_is_downloaded_without_acceptance(cache, server, served_network, capsys):
    with pytest.raises(wmod.WeightsError, match="not accepted"):
        wmod.fetch("ffhq-256", base_url=server.base_url, confirm=lambda prompt: False, progress=False)
    err = capsys.readouterr().err
    assert "NVIDIA Source Code License-NC" in err and "NON-COMMERCIALLY" in err
    assert server.requests == [] and not (cache / "stylegan2" / FILENAME).exists()
    # Non-interactive command line without --accept-license: refused (pytest's stdin is not a TTY).
    assert main(["weights", "fetch", "ffhq-256", "--base-url", server.base_url, "--no-progress"]) == 1
    assert server.requests == []


def test_fetch_validates_records_and_loads_by_name(cache, server, served_network, capsys):
    G, data = served_network
    assert main(["weights", "fetch", "ffhq-256", "--base-url", server.base_url, "--accept-license",
                 "--no-progress"]) == 0
    assert server.requests == [("/files/" + FILENAME, None)]
    path = cache / "stylegan2" / FILENAME
    assert path.read_bytes() == data and not list(path.parent.glob("*.unverified*"))
    record = json.loads((cache / "stylegan2" / "fetched.json").read_text())["ffhq-256"]
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["url"] == server.base_url + FILENAME
    loaded = wmod.load_generator("ffhq-256")
    assert loaded.img_resolution == 256 and same_outputs(G, loaded)
    assert main(["weights", "list"]) == 0
    assert "fetched" in capsys.readouterr().out
    # A second fetch finds the verified file and downloads nothing.
    wmod.fetch("ffhq-256", base_url=server.base_url, accept_license=True, progress=False)
    assert len(server.requests) == 1


def test_changed_files_are_detected_on_every_use(cache, server, served_network):
    wmod.fetch("ffhq-256", base_url=server.base_url, accept_license=True, progress=False)
    path = cache / "stylegan2" / FILENAME
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(wmod.WeightsError, match="changed"):
        wmod.load_generator("ffhq-256")
    assert main(["weights", "verify", "ffhq-256"]) == 1


def test_interrupted_download_resumes_with_a_range_request(cache, server, served_network):
    _, data = served_network
    part = cache / "stylegan2" / (FILENAME + ".unverified.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 3])
    wmod.fetch("ffhq-256", base_url=server.base_url, accept_license=True, progress=False)
    assert server.requests == [("/files/" + FILENAME, f"bytes={len(data) // 3}-")]
    assert (cache / "stylegan2" / FILENAME).read_bytes() == data


def test_base_url_from_environment(cache, server, served_network, monkeypatch):
    monkeypatch.setenv(wmod.BASE_URL_ENV, server.base_url)
    wmod.fetch("ffhq-256", confirm=lambda prompt: True, progress=False)
    assert server.requests[0][0] == "/files/" + FILENAME


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_bad_downloads_are_rejected_and_removed(cache, server, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    server.files["/files/" + FILENAME] = pickle.dumps(_Evil(marker))
    with pytest.raises(wmod.WeightsError, match="not a usable StyleGAN2 network"):
        wmod.fetch("ffhq-256", base_url=server.base_url, accept_license=True, progress=False)
    assert not marker.exists()
    assert not list((cache / "stylegan2").glob("stylegan2-*")) and not (cache / "stylegan2" / "fetched.json").exists()
    # A valid network of the wrong resolution is not accepted under this name either.
    fake = FakeNvidiaModules(monkeypatch)
    server.files["/files/" + FILENAME] = write_nvidia_pickle(tmp_path / "n.pkl", fake, tiny_generator()).read_bytes()
    with pytest.raises(wmod.WeightsError, match="256px"):
        wmod.fetch("ffhq-256", base_url=server.base_url, accept_license=True, progress=False)
    assert not list((cache / "stylegan2").glob("stylegan2-*"))
    with pytest.raises(wmod.WeightsError, match="fetch"):
        wmod.load_generator("ffhq-256")


def test_registry_urls_are_nvidias():
    assert [net.url() for net in wmod.PRETRAINED.values()] == [
        "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
        f"stylegan2-ffhq-{r}x{r}.pkl" for r in (1024, 512, 256)
    ]


def test_dest_dir_option(cache, server, served_network, tmp_path):
    out = tmp_path / "elsewhere"
    assert main(["weights", "fetch", "ffhq-256", "--dir", str(out), "--base-url", server.base_url,
                 "--accept-license", "--no-progress"]) == 0
    assert (out / FILENAME).exists()
    assert isinstance(wmod.load_generator("ffhq-256"), torch.nn.Module)
