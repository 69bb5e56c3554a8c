"""`stylerig addon build`: the installable extension zip (blender_manifest.toml + the add-on's modules)."""

from __future__ import annotations

import ast
import sys
import tomllib
import zipfile
from pathlib import Path

# What the add-on may import: the standard library, numpy (bundled with Blender) and Blender's own modules.
ALLOWED_IMPORTS = frozenset({"numpy", "bpy", "mathutils", "bpy_extras", "gpu", "bl_math", "idprop"})


class PackageError(RuntimeError):
    pass


def source_dirs() -> tuple[Path, Path]:
    """(the add-on's folder, blender_manifest.toml) of this checkout."""
    import stylerig_addon

    addon = Path(stylerig_addon.__file__).resolve().parent
    manifest = addon.parent / "blender_manifest.toml"
    if not manifest.is_file():
        raise PackageError(f"no blender_manifest.toml beside {addon}: build the add-on from a source checkout "
                           "(pip install -e .)")
    return addon, manifest


def check_imports(addon: Path) -> list[str]:
    """Modules imported by the add-on that Blender's Python may lack (anything but stdlib, numpy, bpy...)."""
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for path in sorted(addon.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top not in ALLOWED_IMPORTS and top != "__future__":
                    bad.append(f"{path.name}:{node.lineno}: import {name}")
    return bad


def manifest_info(manifest: Path) -> dict:
    with open(manifest, "rb") as f:
        data = tomllib.load(f)
    for key in ("schema_version", "id", "version", "name", "tagline", "maintainer", "type", "license",
                "blender_version_min"):
        if key not in data:
            raise PackageError(f"{manifest}: missing {key!r}")
    return data


def build(out_dir: str | Path = "dist") -> Path:
    """Write dist/stylerig-<version>.zip; returns its path."""
    addon, manifest = source_dirs()
    bad = check_imports(addon)
    if bad:
        raise PackageError("the add-on must need only the standard library, numpy and Blender's modules:\n  "
                           + "\n  ".join(bad))
    info = manifest_info(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{info['id']}-{info['version']}.zip"
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(manifest, "blender_manifest.toml")
        for f in sorted(addon.glob("*.py")):
            z.write(f, f.name)
    tmp.replace(path)
    return path
