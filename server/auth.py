"""Per-run access tokens: random, written to a file only the user can read, compared in constant time."""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

from stylerig_engine.fileio import atomic_write

TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def tokens_equal(given: object, expected: str) -> bool:
    """Constant-time comparison; anything that is not a string is simply wrong."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def runtime_dir() -> Path:
    """A private (0700) directory for the token and the Unix socket: $XDG_RUNTIME_DIR/stylerig, else
    <tmp>/stylerig-<uid>."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        path = Path(base) / "stylerig"
    else:
        uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
        path = Path(tempfile.gettempdir()) / f"stylerig-{uid}"
    ensure_private_dir(path)
    return path


def ensure_private_dir(path: Path) -> None:
    """Create `path` 0700, or check that an existing one belongs to this user and is not open to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not hasattr(os, "getuid"):
        return
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; refusing to put the engine token there")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def write_token_file(path: str | os.PathLike, token: str) -> Path:
    """Write `token` to `path`, readable by this user only (0600), atomically: the temporary file beside it is
    created 0600 (mkstemp, O_EXCL) before anything is written and renamed into place, so no other user ever
    sees a readable token file."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_write(path, "w", permissions=0o600) as f:
        f.write(token + "\n")
    return path


def remove_token_file(path: str | os.PathLike, token: str) -> None:
    """Remove the file only if it still holds our token (another engine may have replaced it)."""
    with contextlib.suppress(OSError):
        with open(path, encoding="ascii") as f:
            if not tokens_equal(f.read().strip(), token):
                return
        os.unlink(path)
