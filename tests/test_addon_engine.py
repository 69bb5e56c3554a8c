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

from stylerig_addon import live, png
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


# ---- the extension, installed and driven like a user would ----------------------------------------------------
INSTALL_SCRIPT = textwrap.dedent("""
    import json, sys
    import bpy
    zip_path, listen, out, csv = sys.argv[-4:]
    result = {}
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    name = "bl_ext.user_default.stylerig"
    result["enabled"] = name in bpy.context.preferences.addons
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.source, prefs.address = "CONNECT", listen
    result["test"] = sorted(bpy.ops.stylerig.test_connection())
    result["build"] = sorted(bpy.ops.stylerig.build_rig(seed=4, match=True))
    rig = sys.modules[name + ".rig"].find_rig(bpy.context)
    result["params"] = [float(x) for x in sys.modules[name + ".rig"].read_params(rig)]
    result["import"] = sorted(bpy.ops.stylerig.import_livelink(filepath=csv, start_frame=1))
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 3
    scene.stylerig.output_dir, scene.stylerig.batch_size = out, 32
    result["render"] = sorted(bpy.ops.stylerig.batch_render(wait=True))
    result["new_face"] = sorted(bpy.ops.stylerig.new_face(seed=9))
    result["seed"] = rig.armature["face_seed"]
    bpy.ops.preferences.addon_disable(module=name)
    result["disabled"] = name not in bpy.context.preferences.addons
    print("RESULT " + json.dumps(result))
""")


def test_built_zip_installs_into_blender_and_its_operators_work(engine, tmp_path):
    from stylerig_engine.blender.package import build

    zip_path = build(tmp_path / "dist")
    user = tmp_path / "blender-user"
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(user), "BLENDER_USER_CONFIG": str(user / "config"),
           "BLENDER_USER_SCRIPTS": str(user / "scripts"), "BLENDER_USER_EXTENSIONS": str(user / "extensions")}
    script = tmp_path / "install.py"
    script.write_text(INSTALL_SCRIPT)
    csv = write_take(tmp_path / "take.csv", n=30)
    res = subprocess.run([sys.executable, str(script), str(zip_path), json.dumps(engine.listen),
                          str(tmp_path / "out"), str(csv)],
                         check=False, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads(line[7:])
    assert (user / "extensions" / "user_default" / "stylerig" / "blender_manifest.toml").is_file()
    assert result["enabled"] and result["disabled"]
    for op in ("test", "build", "import", "render", "new_face"):
        assert result[op] == ["FINISHED"], (op, res.stderr[-3000:])
    with engine.connect() as c:  # the rig was matched to face 4's own parameters (oracle fit)
        fitted = c.fit(c.new_face(4, 0.7))
    np.testing.assert_allclose(result["params"], fitted, atol=2e-5, rtol=1e-5)
    frames = sorted((tmp_path / "out").glob("frame_*.png"))
    assert [f.name for f in frames] == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    assert (tmp_path / "out" / "stylerig.mp4").stat().st_size > 0
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
    finally:
        preview.close()
    animate(rig, 3)
    job = BatchJob.from_scene(bpy.context.scene, rig, tmp_path / "frames", frames=range(1, 4), size=SIZE)
    with rignet_engine.connect() as c:
        job.run(c)
    assert job.status == "done" and job.modes_used == ("pose", "expression", "illumination") and not job.notes
    a, b = (png.decode_png(job.frame_path(f)).astype(int) for f in (1, 3))
    assert np.abs(a - b).max() > 5  # the rig's animation reaches the images
