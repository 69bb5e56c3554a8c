"""The add-on against a real engine process (`stylerig serve`, synthetic generator at 64 px, on loopback):
the built zip installed into Blender through its extension system and driven by its operators, the live
preview's logic called directly (timers do not run headless), surviving the engine's death, batch rendering
with resume and cancel, and the headless `stylerig demo` / `render-blend` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_matrix
from stylerig_addon import live, livelink, png
from stylerig_addon import rig as R
from stylerig_addon.batch import BatchJob, encode_mp4
from stylerig_addon.client import Client
from stylerig_addon.engine_process import LocalEngine, serve_args
from test_addon_pure import write_take

pytestmark = pytest.mark.blender
SIZE = 32


class EngineProcess:
    """`stylerig serve` on a fixed loopback port (after the first start), so that it can die and come back."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.token_file = tmp / "token"
        self.port = 0
        self.proc: LocalEngine | None = None
        self.starts = 0

    def start(self) -> None:
        self.proc = LocalEngine.start(
            [sys.executable, "-m", "stylerig_engine"],
            serve_args(generator="synthetic:64", device="cpu", port=self.port, token_file=str(self.token_file),
                       oracle_fit=True, extra=["--no-unix"]),
            log_path=self.tmp / "engine.log", timeout=120)
        self.port = int(self.proc.listen["port"])
        self.starts += 1

    @property
    def listen(self) -> dict:
        assert self.proc is not None
        return self.proc.listen

    def connect(self) -> Client:
        return Client.connect(("127.0.0.1", self.port), token_file=self.token_file, connect_timeout=2.0)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = EngineProcess(tmp_path_factory.mktemp("engine"))
    e.start()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def geometry(engine):
    with engine.connect() as c:
        return c.geometry()


@pytest.fixture
def rig(geometry):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return R.build_rig(*geometry, seed=7, psi=0.7)


def engine_image(engine: EngineProcess, seed: int, **kw) -> np.ndarray:
    with engine.connect() as c:
        h = c.new_face(seed, 0.7)
        return np.array(c.render(h, size=SIZE, **kw))


def poll_until(preview: live.LivePreview, cond, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = preview.poll()
        if cond(r):
            return r
        time.sleep(0.02)
    raise AssertionError(f"timed out; status: {preview.status_text()}")


# ---- the extension, installed and driven like a user would, in every Blender of the matrix ---------------------
INSTALL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import bpy
    zip_path, listen, out, csv = sys.argv[-4:]
    result = {"blender": bpy.app.version_string}
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    name = "bl_ext.user_default.stylerig"
    result["enabled"] = name in bpy.context.preferences.addons
    ops, rig_mod = sys.modules[name + ".operators"], sys.modules[name + ".rig"]
    prefs = bpy.context.preferences.addons[name].preferences
    # Preferences > Device: "Auto" is an item like the others, the default, and can be chosen again
    result["device_items"] = [i.identifier for i in prefs.bl_rna.properties["device"].enum_items]
    result["device_default"] = prefs.device
    prefs.device = "cpu"
    prefs.device = "AUTO"
    result["device_again"] = prefs.device
    result["device_setting"] = sys.modules[name + ".preferences"].engine_settings(bpy.context).device
    prefs.source, prefs.address = "CONNECT", listen
    result["test"] = sorted(bpy.ops.stylerig.test_connection())
    # File > Import > Live Link Face (.csv): greyed out until there is a rig
    drawn = []
    class Layout:
        def operator(self, idname, **kw):
            drawn.append([idname, kw.get("text")])
    for fn in bpy.types.TOPBAR_MT_file_import.draw._draw_funcs:
        if getattr(fn, "__module__", "") == name + ".menus":
            fn(type("Menu", (), {"layout": Layout()})(), bpy.context)
    result["import_menu"] = drawn
    result["import_poll_without_rig"] = bpy.ops.stylerig.import_livelink.poll()
    scene = bpy.context.scene
    result["camera_before"] = scene.camera.name if scene.camera else None
    result["build"] = sorted(bpy.ops.stylerig.build_rig(seed=4, match=True))
    result["camera_after"] = scene.camera.name
    rig = rig_mod.find_rig(bpy.context)
    result["params"] = [float(x) for x in rig_mod.read_params(rig)]
    result["rest"] = rig_mod.face_spec(rig).get("rest")
    tree = rig.face.active_material.node_tree
    bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Base Color"].links[0]
    result["base_color"] = [link.from_node.type, link.from_node.attribute_name, link.from_socket.name]
    result["bsdf_to_output"] = any(l.from_node == bsdf and l.to_node.type == "OUTPUT_MATERIAL" for l in tree.links)
    result["import_poll"] = bpy.ops.stylerig.import_livelink.poll()
    result["import"] = sorted(bpy.ops.stylerig.import_livelink(filepath=csv, start_frame=1))
    scene.frame_set(7)
    result["rotation_7"] = [float(x) for x in rig_mod.read_params(rig, update=False)[rig.layout.slice("rotation")]]
    scene.frame_start, scene.frame_end = 1, 3
    scene.stylerig.output_dir, scene.stylerig.batch_size = out + "/wait", 32
    result["render"] = sorted(bpy.ops.stylerig.batch_render(wait=True))
    # the UI's path: a thread renders, a timer watches (called by hand: timers do not fire headless)
    def render_in_background():
        started = sorted(bpy.ops.stylerig.batch_render())
        deadline = time.monotonic() + 120
        while ops._watch_batch() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        state = ops.BatchState
        return {"started": started, "ok": state.ok, "message": state.message, "idle": state.thread is None,
                "can_render": bpy.ops.stylerig.batch_render.poll(), "can_cancel": bpy.ops.stylerig.batch_cancel.poll()}
    scene.stylerig.output_dir = out + "/ui"
    result["ui_render"] = render_in_background()
    def broken_encoder(*args, **kwargs):
        raise AttributeError("injected: no such Blender API")
    real_encoder, ops.encode_mp4 = ops.encode_mp4, broken_encoder
    result["ui_render_mp4_fails"] = render_in_background()
    ops.encode_mp4 = real_encoder
    result["ui_render_again"] = render_in_background()
    result["new_face"] = sorted(bpy.ops.stylerig.new_face(seed=9))
    result["seed"] = rig.armature["face_seed"]
    result["rest_after_new_face"] = "rest" in rig_mod.face_spec(rig)
    bpy.ops.preferences.addon_disable(module=name)
    result["disabled"] = name not in bpy.context.preferences.addons
    print("RESULT " + json.dumps(result))
""")

BLENDERS = [pytest.param(None, id=f"bpy-{blender_matrix.here() or 'none'}"),
            *(pytest.param(v, id=f"bpy-{blender_matrix.split_entry(v)[0]}") for v in blender_matrix.extra_versions())]


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory):
    from stylerig_engine.blender.package import build

    return build(tmp_path_factory.mktemp("dist"))


@pytest.mark.parametrize("bpy_version", BLENDERS)
def test_built_zip_installs_into_blender_and_its_operators_work(bpy_version, engine, addon_zip, tmp_path):
    try:
        python = blender_matrix.blender_python(bpy_version)
    except blender_matrix.BlenderUnavailable as e:
        pytest.fail(f"Blender {bpy_version} for the add-on test matrix: {e}")
    validate = subprocess.run([str(python), str(blender_matrix.validator(python)), "validate", str(addon_zip)],
                              check=False, capture_output=True, text=True, timeout=120)
    assert validate.returncode == 0, validate.stdout + validate.stderr  # Blender's own extension checks
    user = tmp_path / "blender-user"
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(user), "BLENDER_USER_CONFIG": str(user / "config"),
           "BLENDER_USER_SCRIPTS": str(user / "scripts"), "BLENDER_USER_EXTENSIONS": str(user / "extensions")}
    script = tmp_path / "install.py"
    script.write_text(INSTALL_SCRIPT)
    csv = write_take(tmp_path / "take.csv", n=30)
    out = tmp_path / "out"
    res = subprocess.run([str(python), str(script), str(addon_zip), json.dumps(engine.listen), str(out), str(csv)],
                         check=False, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    log = res.stdout[-3000:] + res.stderr[-3000:]
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, log
    result = json.loads(line[7:])
    if bpy_version is not None:
        assert result["blender"].startswith(blender_matrix.split_entry(bpy_version)[0]), result["blender"]
    assert (user / "extensions" / "user_default" / "stylerig" / "blender_manifest.toml").is_file()
    assert result["enabled"] and result["disabled"]
    for op in ("test", "build", "import", "render", "new_face"):
        assert result[op] == ["FINISHED"], (op, log)
    assert "matches no enum" not in res.stdout + res.stderr
    assert result["device_items"] == ["AUTO", "cuda", "cpu"]
    assert (result["device_default"], result["device_again"], result["device_setting"]) == ("AUTO", "AUTO", "")
    assert result["import_menu"] == [["stylerig.import_livelink", "Live Link Face (.csv)"]]
    assert (result["import_poll_without_rig"], result["import_poll"]) == (False, True)
    # the startup file's camera gives way to the rig's, and the report says so
    assert (result["camera_before"], result["camera_after"]) == ("Camera", "StyleRig Camera")
    assert "'StyleRig Camera' is now the scene camera (was 'Camera')" in res.stdout + res.stderr
    # Material Preview / renders show the albedo attribute through the Principled BSDF
    assert result["base_color"] == ["ATTRIBUTE", "albedo", "Color"] and result["bsdf_to_output"]
    with engine.connect() as c:  # the rig was matched to face 4's own parameters (oracle fit)
        fitted = c.fit(c.new_face(4, 0.7))
    np.testing.assert_allclose(result["params"], fitted, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(result["rest"], result["params"], atol=1e-6)  # the match is kept as the rig's rest
    assert result["rest_after_new_face"] is False  # ... and forgotten with the face
    # Live Link keys read back through frame_set: frame 7 is the take at 0.25 s (24 frames/s from frame 1)
    take = livelink.read_csv(csv)
    _, samples = livelink.resample(take, 24.0, 1)
    np.testing.assert_allclose(result["rotation_7"], [samples[c][6] for c in ("HeadPitch", "HeadYaw", "HeadRoll")],
                               atol=1e-5)
    for run in ("wait", "ui"):
        frames = sorted((out / run).glob("frame_*.png"))
        assert [f.name for f in frames] == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
        assert (out / run / "stylerig.mp4").stat().st_size > 0
    ui, broken, again = result["ui_render"], result["ui_render_mp4_fails"], result["ui_render_again"]
    assert ui["started"] == ["FINISHED"] and ui["ok"] and "3 rendered" in ui["message"], ui
    # a failure after the frames (here: the MP4) is reported, and every button works again
    assert not broken["ok"] and "MP4 failed: AttributeError: injected" in broken["message"], broken
    assert "3 already there" in broken["message"]
    for state in (ui, broken, again):
        assert state["idle"] and state["can_render"] and not state["can_cancel"], state
    assert again["ok"] and "3 already there" in again["message"], again
    assert result["seed"] == 9


# ---- live preview ---------------------------------------------------------------------------------------------
def test_live_preview_logic(engine, rig):
    preview = live.LivePreview(engine.connect, size=SIZE)
    try:
        seq = preview.submit(rig, update=True)
        assert seq is not None
        assert preview.submit(rig, update=True) is None  # nothing changed: nothing sent
        first = poll_until(preview, lambda r: r is not None)
        assert first.seq == seq
        img = bpy.data.images[live.IMAGE_NAME]
        assert tuple(img.size) == (SIZE, SIZE) and img.is_float
        pixels = np.zeros(SIZE * SIZE * 4, np.float32)
        img.pixels.foreach_get(pixels)
        ref = engine_image(engine, 7, format="float16", colorspace="linear", origin="bottom")
        np.testing.assert_array_equal(pixels.reshape(SIZE, SIZE, 4), ref.astype(np.float32))
        # this engine has no RigNets: the face is shown as generated, and the status says so
        assert preview.modes_used() == ()
        status = preview.status_text()
        assert status.startswith("live") and "no RigNet for pose, expression, illumination" in status
        assert " ms" in status
        # posing the rig sends the new parameters; the newest result wins
        for yaw in (0.1, 0.2, 0.3):
            rig.armature.pose.bones["head"].rotation_euler[1] = yaw
            last = preview.submit(rig, update=True)
        assert last is not None
        r = poll_until(preview, lambda r: r is not None and r.seq == last)
        assert r.latency > 0 and preview.frames >= 2 and preview.fps > 0
        # another face of the generator
        rig.armature[R.SEED_KEY] = 8
        preview.submit(rig, update=True)
        poll_until(preview, lambda r: r is not None)
        img.pixels.foreach_get(pixels)
        ref8 = engine_image(engine, 8, format="float16", colorspace="linear", origin="bottom")
        np.testing.assert_array_equal(pixels.reshape(SIZE, SIZE, 4), ref8.astype(np.float32))
    finally:
        preview.close()


def test_live_preview_survives_the_engine_dying_and_reconnects(engine, rig):
    preview = live.LivePreview(engine.connect, size=SIZE, reconnect_interval=0.2)
    try:
        preview.submit(rig, update=True)
        poll_until(preview, lambda r: r is not None)
        engine.kill()
        rig.armature.pose.bones["head"].rotation_euler[1] = 0.25
        seq = preview.submit(rig, update=True)
        deadline = time.monotonic() + 10
        while preview.stream.status == "connected" and time.monotonic() < deadline:
            assert preview.poll() is None
            time.sleep(0.05)
        assert preview.status_text().startswith("engine unreachable")  # a clear status, no exception
        engine.start()  # the engine comes back (same port, a new token)
        r = poll_until(preview, lambda r: r is not None and seq is not None and r.seq >= seq, timeout=60)
        assert r is not None and preview.stream.stats["reconnects"] >= 1
        assert preview.status_text().startswith("live")
    finally:
        preview.close()
        if not engine.proc or not engine.proc.running:
            engine.start()


# ---- batch rendering --------------------------------------------------------------------------------------------
def animate(rig, n: int) -> None:
    head = rig.armature.pose.bones["head"]
    for f, yaw in ((1, -0.3), (n, 0.3)):
        head.rotation_euler[1] = yaw
        head.keyframe_insert("rotation_euler", index=1, frame=f)
    kb = rig.key_blocks["jawOpen"]
    for f, v in ((1, 0.0), (n, 0.8)):
        kb.value = v
        kb.keyframe_insert("value", frame=f)


def test_batch_render_writes_frames_and_an_mp4_and_resumes(engine, rig, tmp_path):
    animate(rig, 6)
    scene = bpy.context.scene
    out = tmp_path / "frames"
    job = BatchJob.from_scene(scene, rig, out, frames=range(1, 7), size=SIZE)
    lay = rig.layout
    assert job.params[0][lay.slice("rotation")][1] == pytest.approx(-0.3, abs=1e-6)
    assert job.params[5][lay.slice("expression")][lay.entries("expression").index("jawOpen")] == pytest.approx(0.8)
    seen = []
    with engine.connect() as c:
        job.run(c, on_frame=lambda j, f: seen.append((f, j.done)))
    assert job.status == "done" and (job.done, job.skipped, job.total) == (6, 0, 6), job.summary()
    assert seen == [(f, f) for f in range(1, 7)]
    assert any("no RigNet" in n for n in job.notes) and job.modes_used == ()
    ref = engine_image(engine, 7)
    for path in job.frame_paths():
        info = png.png_info(path)
        assert info is not None and (info["width"], info["height"]) == (SIZE, SIZE)
        np.testing.assert_array_equal(png.decode_png(path), ref)  # no RigNets: the face as generated
    # MP4 with Blender's FFmpeg
    mp4 = encode_mp4(job.frame_paths(), tmp_path / "anim.mp4", fps=24)
    video = np.stack(list(_ffmpeg_frames(mp4)))
    assert video.shape == (6, SIZE, SIZE, 3)
    assert np.abs(video.astype(float) - ref[None, :, :, :3]).mean() < 8  # H.264 of the same frames
    # resume: everything is there and up to date
    again = BatchJob.from_scene(scene, rig, out, frames=range(1, 7), size=SIZE)
    with engine.connect() as c:
        again.run(c)
    assert (again.status, again.done, again.skipped) == ("done", 0, 6)
    # a truncated frame and a frame whose rig state changed are rendered again, the rest kept
    damaged = job.frame_path(3)
    damaged.write_bytes(damaged.read_bytes()[:100])
    mtime = job.frame_path(1).stat().st_mtime_ns
    third = BatchJob.from_scene(scene, rig, out, frames=range(1, 7), size=SIZE)
    third.params[4, lay.slice("expression").start] += 0.25
    with engine.connect() as c:
        third.run(c)
    assert (third.status, third.done, third.skipped) == ("done", 2, 4)
    assert png.png_info(damaged) is not None and job.frame_path(1).stat().st_mtime_ns == mtime


def _ffmpeg_frames(path):
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    for raw in gen:
        yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)


def test_batch_cancel_keeps_complete_frames_and_resumes(engine, rig, tmp_path):
    n = 48
    animate(rig, n)
    scene = bpy.context.scene
    out = tmp_path / "frames"
    job = BatchJob.from_scene(scene, rig, out, frames=range(1, n + 1), size=SIZE)
    with engine.connect() as c:
        t = threading.Thread(target=job.run, args=(c,))
        t.start()
        deadline = time.monotonic() + 30
        while job.done < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        job.cancel()  # from another thread, as the Cancel button does
        t.join(30)
    assert job.status == "cancelled" and 1 <= job.done < n, job.summary()
    written = sorted(out.glob("frame_*.png"))
    assert len(written) == job.done and all(png.png_info(p) is not None for p in written)
    assert not list(out.glob(".*.tmp"))
    rest = BatchJob.from_scene(scene, rig, out, frames=range(1, n + 1), size=SIZE)
    with engine.connect() as c:
        rest.run(c)
    assert (rest.status, rest.skipped, rest.done) == ("done", job.done, n - job.done)


# ---- headless commands -----------------------------------------------------------------------------------------
def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stylerig_engine", *args], check=False, capture_output=True,
                          text=True, timeout=timeout)


def test_demo_against_a_running_engine(engine, tmp_path):
    demo = tmp_path / "demo"
    res = run_cli("demo", "--out", str(demo), "--frames", "6", "--size", "64", "--seed", "2",
                  "--engine", json.dumps(engine.listen))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["rendered"] == 6 and summary["batch_frames_per_second"] > 0
    assert any("no RigNets" in n for n in summary["notes"])
    assert any("oracle-fit" in n for n in summary["notes"])
    assert len(list((demo / "frames").glob("frame_*.png"))) == 6
    assert len(list((demo / "rig").glob("rig_*.png"))) == 6
    assert (demo / "stylerig.mp4").stat().st_size > 0 and (demo / "demo.blend").stat().st_size > 0
    from PIL import Image

    with Image.open(demo / "contact_sheet.png") as sheet:
        assert sheet.width > 6 * 64 and sheet.height > 2 * 64


def test_render_blend_renders_resumes_and_reports_bad_input(engine, rig, tmp_path, capsys):
    animate(rig, 3)
    blend = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    listen = json.dumps(engine.listen)
    out = tmp_path / "rb"
    args = ("render-blend", str(blend), "--frames", "1-3", "--out", str(out), "--size", "32", "--engine", listen,
            "--no-mp4")
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "3 rendered, 0 already there" in res.stdout
    assert sorted(p.name for p in out.glob("frame_*.png")) == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    res = run_cli(*args)
    assert res.returncode == 0 and "0 rendered, 3 already there" in res.stdout
    # bad input, in this process (the command's own function)
    from stylerig_engine.cli import build_parser

    def run_here(*argv: str) -> int:
        a = build_parser().parse_args(["render-blend", *argv, "--out", str(out), "--engine", listen])
        return a.func(a)

    assert run_here(str(tmp_path / "missing.blend")) == 2
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "empty.blend"))
    assert run_here(str(tmp_path / "empty.blend")) == 2
    assert run_here(str(blend), "--frames", "5-1") == 2
    out_text = capsys.readouterr().out
    assert "does not exist" in out_text and "has no StyleRig rig" in out_text and "--frames" in out_text


# ---- the UI's own paths, in this process: Start engine, live preview timer, background batch ----------------
def test_operators_start_engine_live_preview_and_background_batch(monkeypatch, tmp_path):
    """What the buttons do, with the timers' callbacks called by hand (they do not fire in headless Blender)."""
    import stylerig_addon
    from stylerig_addon import operators
    from stylerig_addon.session import SESSION, EngineSettings

    settings = EngineSettings(source="LOCAL", generator="synthetic:64", python_path=sys.executable, device="cpu",
                              extra_args="--no-unix", oracle_fit=True)
    monkeypatch.setattr(operators, "engine_settings", lambda context=None: settings)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    stylerig_addon.register()
    try:
        assert bpy.ops.stylerig.start_engine() == {"FINISHED"}  # returns at once; a thread waits for the engine
        deadline = time.monotonic() + 120
        while operators._watch_start() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert operators.EngineStarter.error is None and SESSION.local is not None and SESSION.local.running
        engine_proc = SESSION.local.proc
        assert bpy.ops.stylerig.test_connection() == {"FINISHED"}
        assert bpy.ops.stylerig.build_rig(seed=3) == {"FINISHED"}
        rig = R.find_rig(bpy.context)
        with SESSION.connect(settings) as c:
            np.testing.assert_allclose(R.read_params(rig), c.fit(c.new_face(3, 0.7)), atol=2e-5, rtol=1e-5)

        scene = bpy.context.scene
        scene.stylerig.live_size = SIZE
        assert bpy.ops.stylerig.live_preview() == {"FINISHED"}
        preview = live.active()
        assert preview is not None and live._on_change in bpy.app.handlers.depsgraph_update_post
        deadline = time.monotonic() + 30
        while preview.frames < 1 and time.monotonic() < deadline:
            assert live._tick() == live.TICK
            time.sleep(0.02)
        assert preview.frames >= 1 and tuple(bpy.data.images[live.IMAGE_NAME].size) == (SIZE, SIZE)
        assert bpy.ops.stylerig.live_preview() == {"FINISHED"}  # toggles off
        assert live.active() is None and live._on_change not in bpy.app.handlers.depsgraph_update_post

        animate(rig, 4)
        scene.frame_start, scene.frame_end = 1, 4
        scene.stylerig.output_dir, scene.stylerig.batch_size = str(tmp_path / "out"), SIZE
        assert bpy.ops.stylerig.batch_render() == {"FINISHED"}  # returns at once; a thread renders
        assert operators.BatchState.thread is not None
        deadline = time.monotonic() + 60
        while operators._watch_batch() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert operators.BatchState.job.status == "done", operators.BatchState.message
        assert "4 rendered" in operators.BatchState.message and (tmp_path / "out" / "stylerig.mp4").is_file()

        assert bpy.ops.stylerig.stop_engine() == {"FINISHED"}
        assert SESSION.local is None and engine_proc.poll() == 0  # a clean exit: its GPU memory is freed
    finally:
        stylerig_addon.unregister()
        SESSION.stop_local()


# ---- failures injected into every step: the job ends, the user is told, every button works again ---------------
class Injected(Exception):
    pass


def _fail(*args, **kwargs):
    raise Injected("injected fault")


@pytest.fixture
def ui(engine, rig, monkeypatch, tmp_path):
    """The add-on registered in this process, talking to the test engine, with a rig animated over 3 frames."""
    import stylerig_addon
    from stylerig_addon import operators
    from stylerig_addon.session import EngineSettings

    monkeypatch.setattr(operators, "engine_settings",
                        lambda context=None: EngineSettings(source="CONNECT", address=json.dumps(engine.listen)))
    stylerig_addon.register()
    animate(rig, 3)
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 3
    scene.stylerig.output_dir, scene.stylerig.batch_size, scene.stylerig.live_size = str(tmp_path / "out"), SIZE, SIZE
    try:
        yield operators
    finally:
        live.stop()
        stylerig_addon.unregister()


def _call(op, **kw) -> set[str] | str:
    """An operator's result, or the error it reported (a script gets a report of ERROR as a RuntimeError)."""
    try:
        return op(**kw)
    except RuntimeError as e:
        return str(e)


def _render(operators, wait: bool) -> set[str] | str:
    """Render animation as the button does; the background path's timer called by hand until it ends."""
    result = _call(bpy.ops.stylerig.batch_render, wait=wait)
    deadline = time.monotonic() + 60
    while not wait and operators._watch_batch() is not None:
        assert time.monotonic() < deadline, "the batch never ended"
        time.sleep(0.02)
    if bpy.app.timers.is_registered(operators._watch_batch):
        bpy.app.timers.unregister(operators._watch_batch)
    return result


def test_a_failure_in_any_step_of_render_animation_is_reported_and_leaves_the_buttons_usable(ui, tmp_path):
    from stylerig_addon import batch

    operators = ui
    gate = threading.Event()
    real_run = batch.BatchJob.run

    def held_run(self, *args, **kwargs):  # the render thread waits until the timer has run once
        gate.wait(30)
        return real_run(self, *args, **kwargs)

    steps = {  # step -> (what fails, does the operator return before the render thread starts)
        "collecting the frames": ((R, "collect_frames", _fail), True),
        "connecting": ((operators, "_connect", _fail), True),
        "asking the engine": ((Client, "info", _fail), False),
        "making the face": ((Client, "new_face", _fail), False),
        "writing a frame": ((png, "write_png", _fail), False),
        "encoding the MP4": ((operators, "encode_mp4", _fail), False),
        "the progress timer": ((batch.BatchJob, "progress", property(_fail)), False),
    }
    mp4 = tmp_path / "out" / "stylerig.mp4"
    for step, ((owner, attr, fault), early) in steps.items():
        for wait in (True, False):
            if step == "the progress timer" and wait:
                continue  # no timer when waiting
            for old in (tmp_path / "out").glob("*.*"):  # every step runs: nothing is there to skip
                old.unlink()
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(owner, attr, fault)
                if step == "the progress timer":
                    gate.clear()
                    mp.setattr(batch.BatchJob, "run", held_run)
                    result = bpy.ops.stylerig.batch_render()
                    assert operators._watch_batch() is None  # the timer failed on its first call, and ended
                    gate.set()
                else:
                    result = _render(operators, wait)
            state = operators.BatchState
            what = f"{step} (wait={wait}): {state.message}"
            if wait or early:  # the operator itself reports the error
                assert isinstance(result, str) and "injected fault" in result, (what, result)
            else:  # the operator started the render; the timer's end puts the error on the panel
                assert result == {"FINISHED"}, what
            assert not state.ok and "Injected: injected fault" in state.message, what
            assert state.thread is None and state.client is None, what
            assert bpy.ops.stylerig.batch_render.poll() and not bpy.ops.stylerig.batch_cancel.poll(), what
            assert not mp4.exists(), what
            # the fault gone, the same button renders
            assert _render(operators, wait) == {"FINISHED"}, what
            assert state.ok and state.message.startswith("done: ") and mp4.stat().st_size > 0, state.message
    assert len(list((tmp_path / "out").glob("frame_*.png"))) == 3


def test_a_failure_in_any_step_of_the_live_preview_stops_it_with_the_reason(ui, rig):
    from stylerig_addon.streaming import StreamingRenderer

    def started() -> live.LivePreview:
        assert bpy.ops.stylerig.live_preview() == {"FINISHED"}
        preview = live.active()
        assert preview is not None and live.last_error is None
        return preview

    def stopped(where: str) -> None:
        assert live.active() is None, where
        assert live._on_change not in bpy.app.handlers.depsgraph_update_post, where
        assert live._on_change not in bpy.app.handlers.frame_change_post, where
        assert not bpy.app.timers.is_registered(live._tick), where

    def wait_for(cond, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.02)

    # starting: reading the rig fails -> the operator reports it and nothing stays hooked up
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "read_params", _fail)
        assert "live preview: Injected: injected fault" in _call(bpy.ops.stylerig.live_preview)
    stopped("start")

    # a handler: reading the rig fails after a pose change
    preview = started()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "read_params", _fail)
        live._on_change()
    stopped("handler")
    assert "reading the rig" in live.last_error and "Injected: injected fault" in live.last_error

    # the sender thread: one request that cannot be sent is reported; the next pose renders
    preview = started()
    wait_for(lambda: live._tick() == live.TICK and preview.frames >= 1, "no first frame")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Client, "render_async", _fail)
        rig.armature.pose.bones["head"].rotation_euler[1] = 0.2
        preview.submit(rig, update=True)
        wait_for(lambda: preview.stream.stats["errors"] >= 1, "the failed request was not reported")
    assert "last error: injected fault" in preview.status_text()
    rig.armature.pose.bones["head"].rotation_euler[1] = 0.3
    preview.submit(rig, update=True)  # (or the depsgraph handler the update runs already did)
    seq = preview.last_seq
    wait_for(lambda: live._tick() == live.TICK and preview.last_result is not None and preview.last_result.seq == seq,
             "the stream did not recover")

    # the sender thread itself fails -> the timer stops the preview and says why
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StreamingRenderer, "_reconnect", _fail)
        preview.stream.client.close()
        wait_for(lambda: preview.stream.failed, "the sender thread did not fail")
    assert live._tick() is None
    stopped("sender thread")
    assert "the sender stopped" in live.last_error and "injected fault" in live.last_error

    # the timer: writing the image fails
    preview = started()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(live.LivePreview, "write_pixels", _fail)
        wait_for(lambda: live._tick() is None, "the timer went on")
    stopped("timer")
    assert "showing the image" in live.last_error and "Injected: injected fault" in live.last_error

    # after all that, the button starts a working preview again
    preview = started()
    wait_for(lambda: live._tick() == live.TICK and preview.frames >= 1, "no frame after the failures")
    assert bpy.ops.stylerig.live_preview() == {"FINISHED"} and live.active() is None


# ---- an engine with RigNets: the rig's blocks go out as targets --------------------------------------------------
@pytest.fixture(scope="module")
def rignet_engine(tmp_path_factory):
    """An engine with a DFR and pose/expression/illumination RigNets (untrained, random decoders so that every
    edit shows in the image): checks the add-on's targets end to end, whatever the networks learned."""
    import torch

    from stylerig_engine.facemodel import load_default_model
    from stylerig_engine.params import layout_for_model
    from stylerig_engine.rig import DFR, RigNet, save_network

    tmp = tmp_path_factory.mktemp("rignet-engine")
    layout = layout_for_model(load_default_model())
    torch.manual_seed(0)
    save_network(DFR(layout, num_ws=14, w_dim=512), tmp / "rig" / "dfr.safetensors")
    for mode in ("pose", "expression", "illumination"):
        net = RigNet(mode, layout, num_ws=14, w_dim=512)
        with torch.no_grad():
            for prm in net.decoder_out.parameters():
                prm.normal_(0.0, 0.05)
        save_network(net, tmp / "rig" / f"rignet-{mode}.safetensors")
    e = EngineProcess(tmp)
    e.proc = LocalEngine.start(
        [sys.executable, "-m", "stylerig_engine"],
        serve_args(generator="synthetic:64", device="cpu", rignet=str(tmp / "rig"), token_file=str(e.token_file),
                   extra=["--no-unix"]),
        log_path=tmp / "engine.log", timeout=120)
    e.port = int(e.proc.listen["port"])
    yield e
    e.stop()


def test_rig_drives_the_engines_rignets(rignet_engine, geometry, tmp_path):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    rig = R.build_rig(*geometry, seed=7, psi=0.7)
    preview = live.LivePreview(rignet_engine.connect, size=SIZE)
    try:
        preview.submit(rig, update=True)
        # the first request may go out before the engine's RigNets are known; polling re-sends it with targets
        first = poll_until(preview, lambda r: r is not None and r.seq == preview.last_seq
                           and preview.modes_used() == ("pose", "expression", "illumination"))
        assert preview.modes_used() == ("pose", "expression", "illumination")
        assert "no RigNet" not in preview.status_text()
        p = R.read_params(rig)
        with rignet_engine.connect() as c:
            h = c.new_face(7, 0.7)
            ref = np.array(c.render(h, {m: p for m in ("pose", "expression", "illumination")}, size=SIZE,
                                    format="float16", colorspace="linear", origin="bottom"))
            plain = np.array(c.render(h, size=SIZE, format="float16", colorspace="linear", origin="bottom"))
        np.testing.assert_array_equal(first.image, ref)
        assert np.abs(ref.astype(np.float32) - plain.astype(np.float32)).max() > 0.01  # the edit shows
        # a matched rig sends its rest: the engine finds the keys (here jawOpen alone) against it, not against
        # DFR's reading, from which this rest is five blendshapes away
        for name in [n for n in rig.layout.entries("expression") if n != "jawOpen"][:5]:
            rig.key_blocks[name].value = 0.5
        R.set_rest(rig)
        rest = R.read_params(rig)
        rig.key_blocks["jawOpen"].value = 0.7
        preview.submit(rig, update=True)
        keyed = poll_until(preview, lambda r: r is not None and r.seq == preview.last_seq)
        p = R.read_params(rig)
        with rignet_engine.connect() as c:
            h = c.new_face(7, 0.7)
            args = dict(size=SIZE, format="float16", colorspace="linear", origin="bottom")
            with_rest = np.array(c.render(h, {m: p for m in ("pose", "expression", "illumination")}, rest=rest, **args))
            without = np.array(c.render(h, {m: p for m in ("pose", "expression", "illumination")}, **args))
        np.testing.assert_array_equal(keyed.image, with_rest)
        assert not np.array_equal(with_rest, without)
    finally:
        preview.close()
    animate(rig, 3)
    job = BatchJob.from_scene(bpy.context.scene, rig, tmp_path / "frames", frames=range(1, 4), size=SIZE)
    with rignet_engine.connect() as c:
        job.run(c)
    assert job.status == "done" and job.modes_used == ("pose", "expression", "illumination") and not job.notes
    a, b = (png.decode_png(job.frame_path(f)).astype(int) for f in (1, 3))
    assert np.abs(a - b).max() > 5  # the rig's animation reaches the images
