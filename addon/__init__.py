"""stylerig Blender extension. Importable without bpy (the engine server shares addon.protocol).

The extension's metadata is blender_manifest.toml (built into the zip by `stylerig addon build`). Blender calls
register()/unregister(); everything that needs bpy is imported there, never at the top of this module.
"""

from __future__ import annotations

# register order: preferences and scene settings before the operators and panels that read them
_MODULES = ("preferences", "properties", "operators", "panels", "menus")


def _modules():
    import importlib

    return [importlib.import_module(f".{name}", __name__) for name in _MODULES]


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    for module in reversed(_modules()):
        module.unregister()
