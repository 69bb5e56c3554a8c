"""The Blender versions the add-on's install tests run in: this environment's `bpy` (5.0, from the project's
`blender` extra) and, in a venv of their own, older `bpy` wheels (4.2 LTS by default; docs/blender.md).

Each extra version gets one venv, made on first use and cached across runs and clones:

    ~/.cache/stylerig/blender/bpy-4.2.23-py3.11/      ($STYLERIG_CACHE/blender/... when that is set)

holding only that `bpy` wheel and the numpy that Blender version ships: the add-on needs nothing else, and the
engine it talks to runs in the project's environment. Making one takes a minute or two (a ~300 MB wheel); a
failure (no network, no wheel for this Python) fails the test that needed it with pip's own words: an
unavailable Blender is a broken test set-up, never a silent skip.

STYLERIG_BLENDER_MATRIX lists the extra versions: comma separated `bpy` versions, each with the Python to make its
venv with after an "@" where that is not this one (bpy 5.1 and later are built for Python 3.13 only), e.g.
"4.2.23,4.5.15,5.3.0@/usr/bin/python3.13"; set it to "" to test this environment's Blender only.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_EXTRA = ("4.2.23",)
# numpy as each Blender release ships it (the add-on runs on Blender's own numpy)
NUMPY_OF = {"4.2": "1.26.4", "4.3": "1.26.4", "4.4": "1.26.4", "4.5": "1.26.4"}
INSTALL_TIMEOUT = 1200  # s: downloading and unpacking a bpy wheel on a slow line


class BlenderUnavailable(RuntimeError):
    pass


def extra_versions() -> tuple[str, ...]:
    """The extra matrix entries, "VERSION" or "VERSION@PYTHON"."""
    spec = os.environ.get("STYLERIG_BLENDER_MATRIX")
    if spec is None:
        return DEFAULT_EXTRA
    return tuple(v.strip() for v in spec.split(",") if v.strip())


def split_entry(entry: str) -> tuple[str, str]:
    """"5.3.0@/usr/bin/python3.13" -> ("5.3.0", that Python); "4.2.23" -> ("4.2.23", this Python)."""
    version, _, python = entry.partition("@")
    return version, python or sys.executable


def here() -> str:
    """The `bpy` version of this environment ("" when it has none)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bpy")
    except PackageNotFoundError:
        return ""


def cache_dir() -> Path:
    root = os.environ.get("STYLERIG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "stylerig")
    return Path(root) / "blender"


def venv_python(entry: str) -> Path:
    """The Python of a venv with `bpy==VERSION` (entry: "VERSION[@PYTHON]"), made (once, under a lock) if needed."""
    bpy_version, base = split_entry(entry)
    try:
        py = subprocess.run([base, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                            text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise BlenderUnavailable(f"no Python {base!r} to make a Blender {bpy_version} environment with: {e}") from e
    venv = cache_dir() / f"bpy-{bpy_version}-py{py}"
    python, done = venv / "bin" / "python", venv / ".stylerig-complete"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run (or engineer) may be making the same venv
        if done.is_file() and python.is_file():
            return python
        shutil.rmtree(venv, ignore_errors=True)  # a half-made one from an interrupted run
        numpy = NUMPY_OF.get(".".join(bpy_version.split(".")[:2]))
        steps = [[base, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", f"bpy=={bpy_version}",
                  *([f"numpy=={numpy}"] if numpy else [])]]
        for cmd in steps:
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
            except subprocess.TimeoutExpired as e:
                raise BlenderUnavailable(f"{' '.join(cmd)} took over {INSTALL_TIMEOUT} s") from e
            if res.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise BlenderUnavailable(
                    f"cannot make a Blender {bpy_version} environment in {venv} for Python {py} ({' '.join(cmd[2:4])} "
                    f"failed; the bpy wheels come from PyPI):\n{(res.stdout + res.stderr)[-2000:]}")
        check = subprocess.run([str(python), "-c", "import bpy; print(bpy.app.version_string)"],
                               capture_output=True, text=True, timeout=300, check=False)
        if check.returncode != 0:
            raise BlenderUnavailable(f"bpy {bpy_version} in {venv} does not import:\n{check.stderr[-2000:]}")
        done.write_text(check.stdout)
        return python


def blender_python(entry: str | None) -> Path:
    """The Python to run a Blender script with: this one (None), else the cached venv's."""
    return Path(sys.executable) if entry is None else venv_python(entry)


def validator(python: Path) -> Path:
    """Blender's own extension validator (`blender --command extension validate`) in that Python's bpy."""
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    found = sorted(Path(purelib).glob("bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise BlenderUnavailable(f"no bl_pkg/cli/blender_ext.py in the bpy of {python}")
    return found[-1]
