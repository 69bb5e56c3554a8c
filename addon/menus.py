"""Entries in Blender's own menus: File › Import › Live Link Face (.csv)."""

from __future__ import annotations

import bpy

from .operators import STYLERIG_OT_import_livelink


def draw_import(self, context) -> None:
    self.layout.operator(STYLERIG_OT_import_livelink.bl_idname, text="Live Link Face (.csv)")


def register() -> None:
    bpy.types.TOPBAR_MT_file_import.append(draw_import)  # type: ignore[arg-type]  # Blender passes (menu, context)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(draw_import)  # type: ignore[arg-type]
