"""Panels: the StyleRig tab of the 3D View sidebar, and the live preview's status in the Image Editor."""

from __future__ import annotations

import bpy

from . import live
from .operators import BatchState, EngineStarter
from .properties import settings
from .rig import AMBIENT_KEY, PSI_KEY, REST_KEY, SEED_KEY, find_rig
from .session import SESSION


class _StylerigPanel(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "StyleRig"


class STYLERIG_PT_engine(_StylerigPanel):
    bl_label = "Engine"

    def draw(self, context):
        layout = self.layout
        row = layout.row(align=True)
        row.operator("stylerig.start_engine", icon="PLAY")
        row.operator("stylerig.stop_engine", icon="PAUSE", text="Stop")
        layout.operator("stylerig.test_connection", icon="LINKED")
        if EngineStarter.thread is not None and EngineStarter.thread.is_alive():
            layout.label(text="starting the engine...", icon="TIME")
        elif EngineStarter.error:
            layout.label(text=EngineStarter.error.splitlines()[0], icon="ERROR")
        elif SESSION.local is not None and SESSION.local.running:
            layout.label(text=f"local engine, pid {SESSION.local.pid}", icon="CHECKMARK")


class STYLERIG_PT_rig(_StylerigPanel):
    bl_label = "Face rig"

    def draw(self, context):
        layout = self.layout
        rig = find_rig(context)
        layout.operator("stylerig.build_rig", icon="ARMATURE_DATA")
        if rig is None:
            layout.label(text="no rig in this scene")
            return
        row = layout.row(align=True)
        row.prop(rig.armature, f'["{SEED_KEY}"]', text="Seed")
        row.prop(rig.armature, f'["{PSI_KEY}"]', text="Psi")
        row = layout.row(align=True)
        row.operator("stylerig.new_face", icon="FILE_REFRESH")
        row.operator("stylerig.match_rig", icon="SNAP_ON")
        row.prop(settings(context), "exact_match", toggle=True)
        if REST_KEY in rig.armature:  # the renders find the expression keys against it (docs/blender.md)
            layout.label(text="matched: keys count from the match", icon="CHECKMARK")
        else:
            layout.label(text="not matched: keys count from the engine's reading", icon="INFO")
        layout.operator("stylerig.reset_rig", icon="LOOP_BACK")
        layout.prop(rig.armature, f'["{AMBIENT_KEY}"]', text="Ambient")
        layout.label(text="head: pose bone 'head' (XYZ = pitch, yaw, roll); lights: the rig's suns")


class STYLERIG_PT_live(_StylerigPanel):
    bl_label = "Live preview"

    def draw(self, context):
        layout = self.layout
        st = settings(context)
        preview = live.active()
        layout.operator("stylerig.live_preview", icon="PAUSE" if preview else "PLAY",
                        text="Stop live preview" if preview else "Start live preview", depress=preview is not None)
        layout.prop(st, "live_size")
        row = layout.row(align=True)
        for mode in ("pose", "expression", "illumination"):
            row.prop(st, f"drive_{mode}", toggle=True)
        if preview is not None:
            layout.label(text=preview.status_text())
            layout.operator("stylerig.show_preview", icon="IMAGE")
        elif live.last_error:
            layout.label(text=live.last_error, icon="ERROR")


class STYLERIG_PT_animation(_StylerigPanel):
    bl_label = "Animation"

    def draw(self, context):
        layout = self.layout
        layout.operator("stylerig.import_livelink", icon="IMPORT")
        st = settings(context)
        col = layout.column()
        col.prop(st, "output_dir")
        row = col.row(align=True)
        row.prop(st, "batch_size")
        row.prop(st, "write_mp4")
        col.prop(st, "final_quality")
        if BatchState.thread is not None and BatchState.job is not None:
            job = BatchState.job
            col.progress(factor=job.progress, text=f"{job.done + job.skipped} / {job.total}")  # type: ignore[attr-defined]
            col.operator("stylerig.batch_cancel", icon="CANCEL")
        else:
            col.operator("stylerig.batch_render", icon="RENDER_ANIMATION")
            if BatchState.message:
                col.label(text=BatchState.message, icon="NONE" if BatchState.ok else "ERROR")


class STYLERIG_PT_image(bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "StyleRig"
    bl_label = "StyleRig"

    def draw(self, context):
        preview = live.active()
        self.layout.operator("stylerig.live_preview", text="Stop live preview" if preview else "Start live preview")
        if preview is not None:
            self.layout.label(text=preview.status_text())


CLASSES = (STYLERIG_PT_engine, STYLERIG_PT_rig, STYLERIG_PT_live, STYLERIG_PT_animation, STYLERIG_PT_image)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
