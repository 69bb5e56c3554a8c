"""Add-on preferences: where the engine is, or how to start a local one."""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from .session import SESSION, EngineSettings

ADDON_ID = __package__ or "stylerig_addon"
DEVICE_AUTO = "AUTO"  # the engine picks (`stylerig serve` without --device)


class StylerigPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    source: EnumProperty(  # type: ignore[valid-type]
        name="Engine", default="LOCAL",
        items=[("LOCAL", "Start a local engine", "run `stylerig serve` as a child process of Blender"),
               ("CONNECT", "Connect to a running engine", "an engine started elsewhere (`stylerig serve`)")])
    address: StringProperty(  # type: ignore[valid-type]
        name="Address", default="",
        description="host:port, unix:PATH or the JSON line `stylerig serve` printed (which names the token file)")
    token_file: StringProperty(name="Token file", default="", subtype="FILE_PATH",  # type: ignore[valid-type]
                               description="the engine's token file (printed by `stylerig serve`)")
    stylerig_path: StringProperty(  # type: ignore[valid-type]
        name="stylerig executable", default="", subtype="FILE_PATH",
        description="the `stylerig` command of the engine's environment, e.g. ~/stylerig/.venv/bin/stylerig")
    python_path: StringProperty(  # type: ignore[valid-type]
        name="or Python", default="", subtype="FILE_PATH",
        description="the Python of the engine's environment (runs `python -m stylerig_engine`)")
    generator: StringProperty(  # type: ignore[valid-type]
        name="Generator", default="synthetic",
        description="synthetic | a StyleGAN2 weights name (e.g. ffhq-1024) or path")
    rignet: StringProperty(name="RigNet", default="", subtype="DIR_PATH",  # type: ignore[valid-type]
                           description="directory of a trained DFR + RigNets (empty: the face as generated)")
    # An item's identifier must not be empty: Blender takes ("", ...) for a separator. The numbers keep what
    # older versions of the add-on stored (CUDA 1, CPU 2).
    device: EnumProperty(  # type: ignore[valid-type]
        name="Device", default=DEVICE_AUTO,
        items=[(DEVICE_AUTO, "Auto", "CUDA when available, else CPU", 0),
               ("cuda", "CUDA", "an NVIDIA GPU", 1), ("cpu", "CPU", "the processor", 2)])
    port: IntProperty(name="Port", default=0, min=0, max=65535,  # type: ignore[valid-type]
                      description="TCP port of the local engine (0: any free port)")
    extra_args: StringProperty(name="Extra arguments", default="",  # type: ignore[valid-type]
                               description="more `stylerig serve` arguments")
    oracle_fit: BoolProperty(  # type: ignore[valid-type]
        name="Oracle fit", default=False,
        description="synthetic generator only: 'Match rig to face' uses the exact ground truth (no DFR needed)")

    def draw(self, context) -> None:
        layout = self.layout
        layout.prop(self, "source", expand=True)
        if self.source == "CONNECT":
            layout.prop(self, "address")
            layout.prop(self, "token_file")
        else:
            col = layout.column()
            col.prop(self, "stylerig_path")
            col.prop(self, "python_path")
            col.prop(self, "generator")
            col.prop(self, "rignet")
            row = col.row()
            row.prop(self, "device")
            row.prop(self, "port")
            col.prop(self, "extra_args")
            col.prop(self, "oracle_fit")
            row = layout.row()
            running = SESSION.local is not None and SESSION.local.running
            row.operator("stylerig.start_engine", icon="PLAY")
            row.operator("stylerig.stop_engine", icon="PAUSE")
            if running and SESSION.local is not None:
                layout.label(text=f"engine running (pid {SESSION.local.pid})", icon="CHECKMARK")
        layout.operator("stylerig.test_connection", icon="LINKED")


def engine_settings(context=None) -> EngineSettings:
    """The engine settings: the add-on preferences when the add-on is enabled; else (scripts, headless tests) the
    environment: STYLERIG_ENGINE (address) and STYLERIG_TOKEN_FILE, or a local engine if one is running."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID) if context.preferences else None
    prefs = getattr(addon, "preferences", None)
    if prefs is not None and (prefs.source == "LOCAL" or prefs.address):
        s = EngineSettings.from_object(prefs)
        if s.device == DEVICE_AUTO:
            s.device = ""
        return s
    env = os.environ.get("STYLERIG_ENGINE", "")
    return EngineSettings(source="CONNECT" if env else "LOCAL", address=env,
                          token_file=os.environ.get("STYLERIG_TOKEN_FILE", ""))


CLASSES = (StylerigPreferences,)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
