"""`stylerig assets fetch ict`: download the ICT FaceXModel files of a pinned upstream commit, check them,
convert them into the cached default model.

Integrity: the SHA-256 of the four upstream OBJ files the project has byte-for-byte copies of are pinned
below. The other files (150 shape OBJs, vertex_indices.json, LICENSE) could not be hashed when this code was
written, so their hashes are recorded on the first complete download in ``manifest.json`` beside the
downloads ("trust on first use") and every later download or conversion checks them. The URL names a fixed
commit, so the bytes must never change; a mismatch is an error.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..fileio import DownloadError, atomic_write, cache_dir, download, sha256_file
from .ict import ICT_COMMIT, ICT_REPO_URL, NEUTRAL_OBJ, upstream_files

URL_ENV = "STYLERIG_ICT_URL"  # base URL override (a mirror, or a local server in tests)
MANIFEST = "manifest.json"
FACEX = "FaceXModel"

# Real upstream bytes (commit da5f95a607f5e6b37755b38d3385d7f2853732e5), path relative to the repo root.
PINNED_SHA256 = {
    "FaceXModel/generic_neutral_mesh.obj": "eedbc2576d8e5ea57f55255b8f98263213a1efb5431d8bfceed1d7aef10271f9",
    "FaceXModel/identity000.obj": "918160cf82d541336b4c367cf93199c9827832bde02511b8fbdf9019d6f1a773",
    "FaceXModel/jawOpen.obj": "8d84355e10f48b05550980cee385bcd426f4797090da76a20de0535bb2f99f4a",
    "FaceXModel/eyeBlink_L.obj": "f5ed1c3072a400083b7d4f7f5cb3d73882b7ebb95c3232f957394db8cf7fe19e",
}


class IntegrityError(DownloadError):
    """A downloaded file no longer matches its pinned or recorded SHA-256."""


def ict_download_root() -> Path:
    return cache_dir() / "downloads" / "ict-facekit"


def ict_download_dir() -> Path:
    """The FaceXModel folder of a `stylerig assets fetch ict` download."""
    return ict_download_root() / FACEX


def base_url(url: str | None = None) -> str:
    url = url or os.environ.get(URL_ENV) or ICT_REPO_URL
    return url if url.endswith("/") else url + "/"


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        return {"format": "stylerig-download-manifest", "source": "ICT-VGL/ICT-FaceKit", "commit": ICT_COMMIT,
                "files": {}}
    return json.loads(path.read_text())


def write_manifest(root: Path, manifest: dict) -> None:
    with atomic_write(root / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


def expected_sha256(rel: str, manifest: dict) -> tuple[str | None, str]:
    """(hash, how it is known: 'pinned' | 'first-use' | 'unknown')."""
    if rel in PINNED_SHA256:
        return PINNED_SHA256[rel], "pinned"
    entry = manifest.get("files", {}).get(rel)
    if entry:
        return entry["sha256"], "first-use"
    return None, "unknown"


def _fetch_one(rel: str, root: Path, url: str, manifest: dict, *, force: bool, progress: bool) -> Path:
    dest = root / rel
    expected, how = expected_sha256(rel, manifest)
    if force and dest.exists():
        dest.unlink()
    try:
        download(url + rel, dest, sha256=expected, progress=progress)
    except DownloadError as e:
        if "SHA-256 mismatch" in str(e):
            where = "in this code" if how == "pinned" else root / MANIFEST
            raise IntegrityError(f"{e}. The file's hash is {how} ({where}); the download does not match the "
                                 "expected upstream bytes") from e
        raise
    if expected is None:  # trust on first use: record it; later downloads and conversions check it
        manifest.setdefault("files", {})[rel] = {
            "sha256": sha256_file(dest), "trust": "first-use", "url": url + rel,
            "recorded": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        write_manifest(root, manifest)
    return dest


def fetch_ict_files(*, url: str | None = None, root: str | os.PathLike | None = None, force: bool = False,
                    progress: bool = True, num_identity: int = 100,
                    expressions: Sequence[str] | None = None) -> Path:
    """Download LICENSE, vertex_indices.json and the shape OBJs into `root` (default the cache) and return
    its FaceXModel folder. Resumes partial downloads; every file is checked against its SHA-256."""
    root = Path(root) if root is not None else ict_download_root()
    url = base_url(url)
    manifest = read_manifest(root)
    if manifest.get("commit") != ICT_COMMIT:
        raise IntegrityError(f"{root / MANIFEST} is for commit {manifest.get('commit')}, expected {ICT_COMMIT}")
    _fetch_one("LICENSE", root, url, manifest, force=force, progress=progress)
    vi = _fetch_one(f"{FACEX}/vertex_indices.json", root, url, manifest, force=force, progress=progress)
    vertex_indices = json.loads(vi.read_text())
    files = upstream_files(num_identity, expressions, vertex_indices)
    files = [f for f in files if f != "vertex_indices.json"]
    files.remove(NEUTRAL_OBJ)
    files.insert(0, NEUTRAL_OBJ)
    for i, name in enumerate(files):
        if progress:
            print(f"[{i + 1}/{len(files)}] {name}", flush=True)
        _fetch_one(f"{FACEX}/{name}", root, url, manifest, force=force, progress=progress)
    return root / FACEX


def verify_download(folder: str | os.PathLike, files: Sequence[str] | None = None) -> None:
    """Check the files of a downloaded FaceXModel folder (and its LICENSE) against the pinned / recorded
    hashes. Files without a known hash fail: they did not come from `stylerig assets fetch ict`."""
    folder = Path(folder)
    root = folder.parent
    manifest = read_manifest(root)
    names = files if files is not None else sorted(p.name for p in folder.iterdir() if p.is_file())
    rels = ["LICENSE"] + [f"{FACEX}/{n}" for n in names]
    for rel in rels:
        path = root / rel
        if not path.is_file():
            continue
        expected, how = expected_sha256(rel, manifest)
        if expected is None:
            raise IntegrityError(f"{path}: no recorded SHA-256 in {root / MANIFEST}; run "
                                 "`stylerig assets fetch ict --force` to download it again")
        got = sha256_file(path)
        if got != expected:
            raise IntegrityError(f"{path}: SHA-256 {got} does not match the {how} hash {expected}; the file changed "
                                 "since it was downloaded. Run `stylerig assets fetch ict --force`")


def is_download(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return folder.name == FACEX and (folder.parent / MANIFEST).is_file()


def fetch_ict(*, source: str | os.PathLike | None = None, url: str | None = None, force: bool = False,
              progress: bool = True, out: str | os.PathLike | None = None):
    """Install the default ICT model: convert from a local `source` or download, then save into the cache.
    Returns (model, path)."""
    from . import default_model_path, install_model
    from .ict import import_ict

    out = Path(out) if out is not None else default_model_path()
    if source is None:
        folder = fetch_ict_files(url=url, force=force, progress=progress)
        verify_download(folder)
        source = folder
    elif is_download(source):
        verify_download(source)
    model = import_ict(source, progress=progress)
    install_model(model, out)
    return model, out
