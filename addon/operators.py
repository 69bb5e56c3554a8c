"""Operators: engine start/stop/test, building and matching the rig, live preview, Live Link import, batch render.

Each is thin: the work lives in session.py, rig.py, live.py, livelink.py and batch.py. Operators that wait on
the engine for long (starting it, batch rendering) run it in a thread and report through a timer; pass
wait=True to run them synchronously (scripts, headless Blender, where timers do not run).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty

from . import live
from .batch import BatchJob, encode_mp4
from .client import Client, EngineError
from .engine_process import EngineStartError
from .layout import Layout
from .preferences import engine_settings
from .properties import settings
from .rig import Rig, apply_params, build_rig, clear_rest, face_spec, find_rig, set_rest
from .session import SESSION, EngineSettings, NotConfigured

ENGINE_ERRORS = (EngineError, EngineStartError, NotConfigured, OSError, ValueError)


def describe(e: BaseException) -> str:
    """One line for the user: the message, and the kind of error where the message alone would not say."""
    if isinstance(e, (*ENGINE_ERRORS, RuntimeError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


def _connect(context) -> Client:
    return SESSION.connect(engine_settings(context))


def _rig_or_report(op, context) -> Rig | None:
    rig = find_rig(context)
    if rig is None:
        op.report({"ERROR"}, "no StyleRig rig in the scene: build one first")
    return rig


def _redraw(context=None) -> None:
    """Redraw every area (progress, status lines). Cosmetic: never raises, so a timer that calls it cannot die."""
    try:
        wm = (context or bpy.context).window_manager
        for window in wm.windows if wm is not None else ():
            for area in window.screen.areas:
                area.tag_redraw()
    except Exception as e:  # noqa: BLE001
        print(f"stylerig: redraw: {e}")


# ---- engine ---------------------------------------------------------------------------------------------------
class EngineStarter:
    """The state of a background engine start (read by panels)."""

    thread: threading.Thread | None = None
    error: str | None = None


def _start(s: EngineSettings) -> None:
    try:
        SESSION.start_local(s)
        EngineStarter.error = None
    except Exception as e:  # noqa: BLE001 - the thread ends either way; the panel shows why
        EngineStarter.error = describe(e)


class STYLERIG_OT_start_engine(bpy.types.Operator):
    """Start a local engine (`stylerig serve`) with the preferences' generator and RigNet"""

    bl_idname = "stylerig.start_engine"
    bl_label = "Start engine"
    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},  # type: ignore[valid-type]
                       description="block until the engine listens (scripts)")

    def execute(self, context):
        s = engine_settings(context)
        s.source = "LOCAL"
        if SESSION.local is not None and SESSION.local.running:
            self.report({"INFO"}, f"engine already running (pid {SESSION.local.pid})")
            return {"FINISHED"}
        if self.wait:
            try:
                engine = SESSION.start_local(s)
            except EngineStartError as e:
                self.report({"ERROR"}, str(e))
                return {"CANCELLED"}
            self.report({"INFO"}, f"engine started (pid {engine.pid})")
            return {"FINISHED"}
        if EngineStarter.thread is not None and EngineStarter.thread.is_alive():
            self.report({"INFO"}, "the engine is starting")
            return {"FINISHED"}
        EngineStarter.error = None
        EngineStarter.thread = threading.Thread(target=_start, args=(s,), name="stylerig-engine-start", daemon=True)
        EngineStarter.thread.start()
        bpy.app.timers.register(_watch_start, first_interval=0.5)
        self.report({"INFO"}, "starting the engine (loading the generator takes a while)")
        return {"FINISHED"}


def _watch_start() -> float | None:
    t = EngineStarter.thread
    _redraw()
    if t is not None and t.is_alive():
        return 0.5
    return None


class STYLERIG_OT_stop_engine(bpy.types.Operator):
    """Stop the local engine (frees its GPU memory)"""

    bl_idname = "stylerig.stop_engine"
    bl_label = "Stop engine"

    def execute(self, context):
        if SESSION.stop_local():
            self.report({"INFO"}, "engine stopped")
        else:
            self.report({"INFO"}, "no local engine running")
        return {"FINISHED"}


class STYLERIG_OT_test_connection(bpy.types.Operator):
    """Connect to the engine and show what it serves"""

    bl_idname = "stylerig.test_connection"
    bl_label = "Test connection"

    def execute(self, context):
        try:
            with _connect(context) as c:
                info = c.info()
                rtt = c.ping()
        except ENGINE_ERRORS as e:
            self.report({"ERROR"}, f"engine: {e}")
            return {"CANCELLED"}
        gen = info.get("generator", {})
        modes = ", ".join(info.get("edit_modes") or []) or "none (faces as generated)"
        self.report({"INFO"}, f"{gen.get('name')} {gen.get('resolution')} px on {info.get('device')}; RigNets: "
                              f"{modes}; fit: {info.get('fit')}; {rtt * 1000:.1f} ms")
        rig = find_rig(context)
        for w in _layout_differences(rig, info) if rig is not None else []:
            self.report({"WARNING"}, w)
        return {"FINISHED"}


# ---- the rig ----------------------------------------------------------------------------------------------------
EXACT_MATCH_WAIT = 300.0  # seconds: a per-image fit is seconds on a GPU, can be a minute on a CPU at 256²


def _layout_differences(rig: Rig, info: dict) -> list[str]:
    """The rig's stored parameter layout against the engine's, as warnings ([] when they agree)."""
    diffs = rig.layout.differences(Layout.from_description(info["layout"]))
    return [f"the rig was built for another engine layout ({'; '.join(diffs)}): rebuild it"] if diffs else []


def _match(rig: Rig, client: Client, exact: bool = False) -> list[str]:
    diffs = _layout_differences(rig, client.info())
    if diffs:
        return diffs
    face = face_spec(rig)
    handle = client.new_face(face["seed"], face["psi"])
    try:
        p = client.fit(handle, final_quality=exact, timeout=EXACT_MATCH_WAIT if exact else None)
    finally:
        client.release(handle)
    warnings = apply_params(rig, p)
    set_rest(rig)  # what the rig shows now, sliders' clamping included: renders find the keys against it
    return warnings


class STYLERIG_OT_build_rig(bpy.types.Operator):
    """Build the face rig (mesh with shape keys, armature, light dome, camera) from the engine's face model"""

    bl_idname = "stylerig.build_rig"
    bl_label = "Build face rig"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a class attribute
    seed: IntProperty(name="Seed", default=0, min=0, description="the engine face to animate")  # type: ignore[valid-type]
    psi: FloatProperty(name="Truncation", default=0.7, min=0.0, max=2.0)  # type: ignore[valid-type]
    match: BoolProperty(name="Match rig to face", default=True,  # type: ignore[valid-type]
                        description="set the rig to the face's own parameters (needs a DFR)")

    def execute(self, context):
        try:
            with _connect(context) as c:
                meta, arrays = c.geometry()
                previous = context.scene.camera
                rig = build_rig(meta, arrays, context=context, seed=self.seed, psi=self.psi)
                warnings = []
                if self.match and c.capabilities.get("fit"):
                    warnings = _match(rig, c, settings(context).exact_match)
        except ENGINE_ERRORS as e:
            self.report({"ERROR"}, f"engine: {e}")
            return {"CANCELLED"}
        for w in warnings:
            self.report({"WARNING"}, w)
        context.view_layer.objects.active = rig.armature
        camera = f"{rig.camera.name!r} is now the scene camera" + (f" (was {previous.name!r})" if previous else "")
        self.report({"INFO"}, f"built {rig.armature.name}: {len(rig.key_blocks) - 1} shape keys; {camera}")
        return {"FINISHED"}


class STYLERIG_OT_new_face(bpy.types.Operator):
    """Animate another face of the generator (by seed)"""

    bl_idname = "stylerig.new_face"
    bl_label = "New face"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a class attribute
    seed: IntProperty(name="Seed", default=0, min=0)  # type: ignore[valid-type]
    psi: FloatProperty(name="Truncation", default=0.7, min=0.0, max=2.0)  # type: ignore[valid-type]
    random: BoolProperty(name="Random seed", default=False, options={"SKIP_SAVE"})  # type: ignore[valid-type]

    def invoke(self, context, event):
        rig = find_rig(context)
        if rig is not None:
            self.seed, self.psi = face_spec(rig)["seed"], face_spec(rig)["psi"]
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        rig = _rig_or_report(self, context)
        if rig is None:
            return {"CANCELLED"}
        if self.random:
            import random

            self.seed = random.randrange(0, 2 ** 31)
        rig.armature["face_seed"] = int(self.seed)
        rig.armature["face_psi"] = float(self.psi)
        clear_rest(rig)  # the match was the previous face's
        rig.armature.update_tag()
        live._submit_current()
        self.report({"INFO"}, f"face seed {self.seed}")
        return {"FINISHED"}


class STYLERIG_OT_match_rig(bpy.types.Operator):
    """Set the rig to the face's own parameters, as the engine's DFR estimates them"""

    bl_idname = "stylerig.match_rig"
    bl_label = "Match rig to face"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a class attribute

    def execute(self, context):
        rig = _rig_or_report(self, context)
        if rig is None:
            return {"CANCELLED"}
        try:
            with _connect(context) as c:
                warnings = _match(rig, c, settings(context).exact_match)
        except ENGINE_ERRORS as e:
            self.report({"ERROR"}, f"engine: {e}")
            return {"CANCELLED"}
        for w in warnings:
            self.report({"WARNING"}, w)
        context.view_layer.update()
        return {"FINISHED"}


class STYLERIG_OT_reset_rig(bpy.types.Operator):
    """Neutral expression, frontal pose, the prior's mean identity and ambient light"""

    bl_idname = "stylerig.reset_rig"
    bl_label = "Reset rig"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a class attribute

    def execute(self, context):
        rig = _rig_or_report(self, context)
        if rig is None:
            return {"CANCELLED"}
        apply_params(rig, rig.layout.neutral())
        clear_rest(rig)
        context.view_layer.update()
        return {"FINISHED"}


# ---- live preview --------------------------------------------------------------------------------------------
class STYLERIG_OT_live_preview(bpy.types.Operator):
    """Start or stop the live preview: the engine renders the rig as you pose it"""

    bl_idname = "stylerig.live_preview"
    bl_label = "Live preview"

    def execute(self, context):
        if live.active() is not None:
            live.stop()
            self.report({"INFO"}, "live preview stopped")
            return {"FINISHED"}
        rig = _rig_or_report(self, context)
        if rig is None:
            return {"CANCELLED"}
        s = engine_settings(context)  # read here: the sender thread must not touch bpy
        try:
            SESSION.address(s)
        except NotConfigured as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        st = settings(context)
        try:
            live.start(lambda: SESSION.connect(s), rig.armature.name, size=st.live_size, modes=st.modes())
        except Exception as e:  # noqa: BLE001 - start() has undone itself; say why
            self.report({"ERROR"}, f"live preview: {describe(e)}")
            return {"CANCELLED"}
        bpy.ops.stylerig.show_preview()
        return {"FINISHED"}


class STYLERIG_OT_show_preview(bpy.types.Operator):
    """Show the live preview image in an Image Editor"""

    bl_idname = "stylerig.show_preview"
    bl_label = "Show preview"

    def execute(self, context):
        img = bpy.data.images.get(live.IMAGE_NAME)
        if img is None:
            img = bpy.data.images.new(live.IMAGE_NAME, 16, 16, alpha=True, float_buffer=True)
        screen = getattr(context, "screen", None)
        areas = [a for a in screen.areas if a.type == "IMAGE_EDITOR"] if screen is not None else []
        for area in areas:
            area.spaces.active.image = img  # type: ignore[attr-defined]
        if not areas and screen is not None:
            self.report({"INFO"}, f"open an Image Editor and pick {live.IMAGE_NAME!r}")
        return {"FINISHED"}


# ---- performance capture -------------------------------------------------------------------------------------
class STYLERIG_OT_import_livelink(bpy.types.Operator):
    """Keyframe the rig from a Live Link Face (ARKit) CSV: blendshapes and head rotation"""

    bl_idname = "stylerig.import_livelink"
    bl_label = "Import Live Link Face CSV"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a class attribute
    filepath: StringProperty(subtype="FILE_PATH")  # type: ignore[valid-type]
    filter_glob: StringProperty(default="*.csv", options={"HIDDEN"})  # type: ignore[valid-type]
    start_frame: IntProperty(name="Start frame", default=-1,  # type: ignore[valid-type]
                             description="first frame of the take (-1: the scene's start)")
    capture_rate: FloatProperty(name="Capture rate", default=0.0, min=0.0,  # type: ignore[valid-type]
                                description="frames/s of the recording's timecodes (0: guess, else 60)")
    head: BoolProperty(name="Head rotation", default=True)  # type: ignore[valid-type]
    flip_yaw: BoolProperty(name="Flip yaw", default=False)  # type: ignore[valid-type]
    flip_pitch: BoolProperty(name="Flip pitch", default=False)  # type: ignore[valid-type]
    flip_roll: BoolProperty(name="Flip roll", default=False)  # type: ignore[valid-type]
    set_range: BoolProperty(name="Set scene frame range", default=True)  # type: ignore[valid-type]

    @classmethod
    def poll(cls, context):
        if find_rig(context) is not None:
            return True
        cls.poll_message_set("build a face rig first (3D View > StyleRig > Build face rig)")
        return False

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        from . import livelink

        rig = _rig_or_report(self, context)
        if rig is None:
            return {"CANCELLED"}
        try:
            take = livelink.read_csv(self.filepath, self.capture_rate or None)
        except (OSError, ValueError) as e:
            self.report({"ERROR"}, f"cannot read {self.filepath}: {e}")
            return {"CANCELLED"}
        scene = context.scene
        start = scene.frame_start if self.start_frame < 0 else self.start_frame
        fps = scene.render.fps / scene.render.fps_base
        signs = (-1.0 if self.flip_pitch else 1.0, -1.0 if self.flip_yaw else 1.0, -1.0 if self.flip_roll else 1.0)
        mapping = livelink.apply_take(rig, take, scene_fps=fps, start_frame=start, head=self.head, head_signs=signs)
        if self.set_range:
            scene.frame_start, scene.frame_end = start, start + int(take.duration * fps)
        for w in take.warnings:
            self.report({"WARNING"}, w)
        if mapping.unknown:
            self.report({"WARNING"}, "unknown columns (ignored): " + ", ".join(mapping.unknown))
        self.report({"INFO"}, mapping.report())
        return {"FINISHED"}


# ---- batch rendering --------------------------------------------------------------------------------------------
class BatchState:
    job: BatchJob | None = None
    thread: threading.Thread | None = None
    client: Client | None = None
    mp4: Path | None = None
    fps: float = 24.0
    message: str = ""
    ok: bool = True  # whether `message` reports success (the panel shows it as an error otherwise)


def _finish_batch(job: BatchJob, write_mp4: bool, fps: float) -> tuple[bool, str]:
    """After the frames: the MP4, and (success, the message for the user). Never raises."""
    msg = job.summary()
    ok = job.status == "done"
    if ok and write_mp4:
        try:
            BatchState.mp4 = encode_mp4(job.frame_paths(), job.out_dir / "stylerig.mp4", fps=fps)
            msg += f"; {BatchState.mp4}"
        except Exception as e:  # noqa: BLE001 - the frames are kept; the user learns why the movie is not there
            ok, msg = False, f"{msg}; MP4 failed: {describe(e)}"
    if job.notes:
        msg += "; " + "; ".join(job.notes)
    return ok, msg


def _end_batch(ok: bool, message: str) -> None:
    """Back to idle, whatever happened: no thread, no client, no progress bar; `message` on the panel."""
    client, BatchState.client, BatchState.thread = BatchState.client, None, None
    BatchState.ok, BatchState.message = ok, message
    if client is not None:
        client.close()
    wm = bpy.context.window_manager
    if wm is not None:
        wm.progress_end()
    if not ok:
        print(f"stylerig: render animation: {message}")


def _watch_batch() -> float | None:
    job, thread = BatchState.job, BatchState.thread
    if job is None or thread is None:
        return None
    try:
        if thread.is_alive():
            wm = bpy.context.window_manager
            if wm is not None:
                wm.progress_update(int(1000 * job.progress))
            _redraw()
            return 0.2
        ok, message = _finish_batch(job, settings(bpy.context).write_mp4, BatchState.fps)
    except Exception as e:  # noqa: BLE001 - Blender drops a timer that raises: end the job here, not stuck
        job.cancel()
        ok, message = False, f"{job.summary()}; stopped: {describe(e)}"
    _end_batch(ok, message)
    _redraw()
    return None


class STYLERIG_OT_batch_render(bpy.types.Operator):
    """Render the scene's frame range through the engine into PNG frames and an MP4 (frames already there and
    up to date are kept)"""

    bl_idname = "stylerig.batch_render"
    bl_label = "Render animation"
    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"})  # type: ignore[valid-type]

    @classmethod
    def poll(cls, context):
        return BatchState.thread is None

    def execute(self, context):
        try:
            return self._execute(context)
        except Exception as e:  # noqa: BLE001 - whatever step failed, leave the batch idle and say why
            if BatchState.job is not None:
                BatchState.job.cancel()
            _end_batch(False, f"render animation failed: {describe(e)}")
            self.report({"ERROR"}, BatchState.message)
            return {"CANCELLED"}

    def _execute(self, context):
        rig = _rig_or_report(self, context)
        if rig is None:
            return {"CANCELLED"}
        st = settings(context)
        scene = context.scene
        out = Path(bpy.path.abspath(st.output_dir))
        fps = scene.render.fps / scene.render.fps_base
        job = BatchJob.from_scene(scene, rig, out, size=st.batch_size or None, modes=st.modes(),
                                  final_quality=st.final_quality)
        try:
            client = _connect(context)
        except ENGINE_ERRORS as e:
            self.report({"ERROR"}, f"engine: {e}")
            return {"CANCELLED"}
        BatchState.job, BatchState.fps, BatchState.mp4, BatchState.message = job, fps, None, ""
        BatchState.ok = True
        if self.wait:
            with client:
                job.run(client)
            ok, BatchState.message = _finish_batch(job, st.write_mp4, fps)
            BatchState.ok = ok
            self.report({"INFO"} if ok else {"ERROR"}, BatchState.message)
            return {"FINISHED"} if ok else {"CANCELLED"}
        BatchState.client = client
        BatchState.thread = threading.Thread(target=job.run, args=(client,), name="stylerig-batch", daemon=True)
        BatchState.thread.start()
        if context.window_manager is not None:
            context.window_manager.progress_begin(0, 1000)
        bpy.app.timers.register(_watch_batch, first_interval=0.2)
        self.report({"INFO"}, f"rendering {job.total} frames to {out}")
        return {"FINISHED"}


class STYLERIG_OT_batch_cancel(bpy.types.Operator):
    """Stop the batch render (frames written so far are kept; rendering again resumes)"""

    bl_idname = "stylerig.batch_cancel"
    bl_label = "Cancel render"

    @classmethod
    def poll(cls, context):
        return BatchState.thread is not None

    def execute(self, context):
        if BatchState.job is not None:
            BatchState.job.cancel()
        return {"FINISHED"}


CLASSES: tuple[Any, ...] = (
    STYLERIG_OT_start_engine, STYLERIG_OT_stop_engine, STYLERIG_OT_test_connection, STYLERIG_OT_build_rig,
    STYLERIG_OT_new_face, STYLERIG_OT_match_rig, STYLERIG_OT_reset_rig, STYLERIG_OT_live_preview,
    STYLERIG_OT_show_preview, STYLERIG_OT_import_livelink, STYLERIG_OT_batch_render, STYLERIG_OT_batch_cancel,
)


register, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def unregister() -> None:
    live.stop()
    for timer in (_watch_batch, _watch_start):  # they would outlive the add-on's classes
        if bpy.app.timers.is_registered(timer):
            bpy.app.timers.unregister(timer)
    if BatchState.job is not None:
        BatchState.job.cancel()
    if BatchState.thread is not None:
        _end_batch(False, "the add-on was disabled during the render")
    SESSION.stop_local()
    _unregister_classes()
