"""`stylerig assets fetch ict`: downloads from a local HTTP server (Range support, resumes, SHA-256 checks,
trust-on-first-use manifest), conversion into the cache and the `assets` command line."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import SHARED_DIR
from range_server import send_with_range

from stylerig_engine.cli import main
from stylerig_engine.facemodel import MorphableModel, default_model_path
from stylerig_engine.facemodel.fetch import (
    PINNED_SHA256,
    IntegrityError,
    fetch_ict,
    fetch_ict_files,
    read_manifest,
    verify_download,
)
from stylerig_engine.facemodel.ict import import_ict, upstream_files
from stylerig_engine.facemodel.obj import format_obj, read_obj

ICT = SHARED_DIR / "assets" / "ict-facekit"
FACEX = ICT / "FaceXModel"
pytestmark = pytest.mark.skipif(not (ICT / "ict_face_light_pack.npz").is_file() or not FACEX.is_dir(),
                                reason=f"shared ICT data not found at {ICT}")
SUBSET = {"num_identity": 2, "expressions": ["eyeBlink_L", "jawOpen", "browDown_L"]}


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single-range `Range: bytes=N-` support; records the requests it saw."""

    log: ClassVar[list] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        RangeHandler.log.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        send_with_range(self, path.read_bytes())


def _pack_shapes(names):
    with np.load(ICT / "ict_face_light_pack.npz") as d:
        all_names = [str(s) for s in d["shape_names"]]
        return {n: d["shapes"][all_names.index(n)] for n in names}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tree like the ICT-FaceKit repository at the pinned commit: the real upstream files we have plus the
    missing subset shapes written from the pack in the upstream OBJ format."""
    root = tmp_path_factory.mktemp("served")
    facex = root / "FaceXModel"
    facex.mkdir()
    shutil.copy(ICT / "LICENSE", root / "LICENSE")
    for f in FACEX.iterdir():
        shutil.copy(f, facex / f.name)
    neutral = read_obj(FACEX / "generic_neutral_mesh.obj")
    for name, verts in _pack_shapes(["identity001", "browDown_L"]).items():
        (facex / f"{name}.obj").write_text(format_obj(neutral, verts))
    return root


@pytest.fixture()
def server(served):
    handler = lambda *a, **k: RangeHandler(*a, directory=str(served), **k)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.log = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_pinned_hashes_are_the_shared_upstream_bytes():
    for rel, sha in PINNED_SHA256.items():
        assert _sha(ICT / rel) == sha, rel


def test_download_resume_manifest_and_import(server, served, tmp_path):
    root = tmp_path / "dl"
    # a previous, interrupted download of identity000.obj: the first 1,000,000 bytes
    part = root / "FaceXModel" / "identity000.obj.part"
    part.parent.mkdir(parents=True)
    part.write_bytes((served / "FaceXModel" / "identity000.obj").read_bytes()[:1_000_000])

    folder = fetch_ict_files(url=server, root=root, progress=False, **SUBSET)
    assert folder == root / "FaceXModel"
    expected = upstream_files(**SUBSET)
    for name in expected:
        assert (folder / name).read_bytes() == (served / "FaceXModel" / name).read_bytes(), name
    assert (root / "LICENSE").read_text().startswith("MIT License")
    assert not part.exists()
    assert ("/FaceXModel/identity000.obj", "bytes=1000000-") in RangeHandler.log  # resumed, not restarted

    manifest = read_manifest(root)
    recorded = manifest["files"]
    # trust on first use for what the code has no hash of; the pinned files are not recorded
    assert set(recorded) == {"LICENSE", "FaceXModel/vertex_indices.json", "FaceXModel/identity001.obj",
                             "FaceXModel/browDown_L.obj"}
    for rel, entry in recorded.items():
        assert entry["sha256"] == _sha(served / rel) and entry["trust"] == "first-use"
    verify_download(folder)

    # a second fetch downloads nothing (every file present and matching)
    RangeHandler.log = []
    fetch_ict_files(url=server, root=root, progress=False, **SUBSET)
    assert RangeHandler.log == []

    model = import_ict(folder, **SUBSET)
    reference = import_ict(ICT, **SUBSET)
    np.testing.assert_array_equal(model.expression_basis, reference.expression_basis)
    np.testing.assert_array_equal(model.identity_basis, reference.identity_basis)
    assert model.expression_names == SUBSET["expressions"]

    # local tampering is caught on later use
    with (folder / "identity001.obj").open("ab") as f:
        f.write(b"# changed\n")
    with pytest.raises(IntegrityError, match="identity001.obj"):
        verify_download(folder)


def test_pinned_hash_mismatch_is_an_error(server, served, tmp_path):
    bad = tmp_path / "bad_served"
    shutil.copytree(served, bad)
    with (bad / "FaceXModel" / "generic_neutral_mesh.obj").open("ab") as f:
        f.write(b"# not upstream\n")
    handler = lambda *a, **k: RangeHandler(*a, directory=str(bad), **k)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        root = tmp_path / "dl"
        with pytest.raises(IntegrityError, match=r"SHA-256 mismatch.*pinned"):
            fetch_ict_files(url=f"http://127.0.0.1:{httpd.server_address[1]}", root=root, progress=False, **SUBSET)
        dest = root / "FaceXModel" / "generic_neutral_mesh.obj"
        assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_recorded_hash_mismatch_is_an_error(server, served, tmp_path):
    root = tmp_path / "dl"
    fetch_ict_files(url=server, root=root, progress=False, **SUBSET)
    manifest = read_manifest(root)
    manifest["files"]["FaceXModel/browDown_L.obj"]["sha256"] = "0" * 64  # as if upstream bytes had changed
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match=r"browDown_L.*first-use"):
        fetch_ict_files(url=server, root=root, progress=False, force=True, **SUBSET)


def test_http_error_is_reported(server, tmp_path):
    from stylerig_engine.fileio import DownloadError

    with pytest.raises(DownloadError, match="404"):
        fetch_ict_files(url=server + "nothing-here/", root=tmp_path / "dl", progress=False, **SUBSET)


def test_cli_fetch_from_local_source_and_info(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STYLERIG_CACHE", str(tmp_path / "cache"))
    assert main(["assets", "fetch", "ict", "--from", str(ICT), "--quiet"]) == 0
    out = capsys.readouterr().out
    path = default_model_path()
    assert path.is_file() and str(path) in out
    notice = path.with_suffix(".NOTICE.txt").read_text()
    assert "MIT License" in notice and "USC Institute for Creative Technologies" in notice
    assert "vertices:    24591" in out
    # already installed: nothing to do
    assert main(["assets", "fetch", "ict"]) == 0
    assert "already installed" in capsys.readouterr().out
    assert main(["assets", "info"]) == 0
    info = capsys.readouterr().out
    assert "triangles:   48836" in info and "expression:  53 (blendshape)" in info
    assert main(["assets", "info", "nope"]) == 1
    assert main(["assets", "fetch", "ict", "--from", str(tmp_path), "--quiet"]) == 1
    assert "neither an ICT FaceXModel folder" in capsys.readouterr().err


@pytest.mark.slow
def test_full_download_and_conversion(served, server, tmp_path, monkeypatch):
    """Every upstream file (150 written from the pack), downloaded and converted: equals the pack model."""
    with np.load(ICT / "ict_face_light_pack.npz") as d:
        names = [str(s) for s in d["shape_names"]]
    neutral = read_obj(FACEX / "generic_neutral_mesh.obj")
    vi = json.loads((FACEX / "vertex_indices.json").read_text())
    for name in upstream_files(100, None, vi)[2:]:
        target = served / "FaceXModel" / name
        if not target.exists():
            target.write_text(format_obj(neutral, _pack_shapes([name[:-4]])[name[:-4]]))
    assert len(names) == 155
    monkeypatch.setenv("STYLERIG_CACHE", str(tmp_path / "cache"))
    model, path = fetch_ict(url=server, progress=False)
    assert path == default_model_path()
    reference = import_ict(ICT)
    loaded = MorphableModel.load(path)
    np.testing.assert_array_equal(loaded.neutral, reference.neutral)
    np.testing.assert_array_equal(model.expression_basis, reference.expression_basis)
    assert len(read_manifest(tmp_path / "cache" / "downloads" / "ict-facekit")["files"]) == 152
