"""The add-on's final-quality options against an engine with the shipped rig on the synthetic world (served in
this process, its final quality set to few fit steps so that a frame is a few seconds of CPU): Exact match on
Match rig to face, the Final quality checkbox of Render animation, and `stylerig render-blend --final-quality`."""

from __future__ import annotations

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from stylerig_addon import png
from stylerig_addon import rig as R
from stylerig_addon.batch import BatchJob
from stylerig_addon.client import Client
from stylerig_addon.layout import targets
from stylerig_server.service import EngineServer
from test_addon_engine import SIZE, animate, run_cli
from test_final_quality import FIT_STEPS

pytestmark = pytest.mark.blender


class ServedEngine:
    def __init__(self, server: EngineServer, listen: dict):
        self.server, self.listen = server, listen
        self.port, self.token_file = int(listen["port"]), listen["token_file"]

    def connect(self) -> Client:
        return Client.connect(self.listen, connect_timeout=2.0)


@pytest.fixture(scope="module")
def shipped_engine(tmp_path_factory):
    from stylerig_engine.engine import Engine, load_rig
    from stylerig_engine.rig.final_quality import FinalQuality
    from stylerig_engine.rig.fitting import ImageReader
    from stylerig_engine.synthetic import make_synthetic

    world = make_synthetic("synthetic:64")
    fit, edit = load_rig("shipped")
    engine = Engine(world, world.model, world.layout, fit=fit, edit=edit, name="synthetic:64")
    engine.final_quality = FinalQuality(fit.rig, ImageReader(fit.rig, world, steps=FIT_STEPS))
    tmp = tmp_path_factory.mktemp("shipped-engine")
    server = EngineServer(engine, port=0, unix_path=None, token_file=tmp / "token")
    e = ServedEngine(server, server.start())
    yield e
    server.shutdown()


def test_exact_match_and_final_quality_checkbox_reach_the_engine(shipped_engine, monkeypatch, tmp_path):
    import stylerig_addon
    from stylerig_addon import operators
    from stylerig_addon.session import EngineSettings

    settings = EngineSettings(source="CONNECT", address=f"127.0.0.1:{shipped_engine.port}",
                              token_file=str(shipped_engine.token_file))
    monkeypatch.setattr(operators, "engine_settings", lambda context=None: settings)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    stylerig_addon.register()
    try:
        scene = bpy.context.scene
        assert (scene.stylerig.exact_match, scene.stylerig.final_quality) == (False, False)  # off by default
        assert bpy.ops.stylerig.build_rig(seed=3, match=True) == {"FINISHED"}
        rig = R.find_rig(bpy.context)
        with shipped_engine.connect() as c:
            h = c.new_face(3, 0.7)
            dfr, exact = c.fit(h), c.fit(h, final_quality=True, timeout=300)
        # plain Match: the DFR's reading, blendshape weights clamped to the rig's range as the rig stores them
        expected = dfr.copy()
        expression = rig.layout.slice("expression")
        expected[expression] = expected[expression].clip(*rig.layout.range("expression"))
        np.testing.assert_allclose(R.read_params(rig), expected, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(R.face_spec(rig)["rest"], R.read_params(rig), atol=1e-6)  # the match is the rest
        assert np.abs(exact - dfr).max() > 1e-3
        scene.stylerig.exact_match = True
        assert bpy.ops.stylerig.match_rig() == {"FINISHED"}
        np.testing.assert_allclose(R.read_params(rig), exact, atol=1e-4)  # Exact match: the per-image fit
        rest = np.asarray(R.face_spec(rig)["rest"], np.float32)
        np.testing.assert_allclose(rest, exact, atol=1e-4)

        animate(rig, 2)
        scene.frame_start = scene.frame_end = 2
        scene.stylerig.output_dir, scene.stylerig.batch_size = str(tmp_path / "out"), SIZE
        scene.stylerig.write_mp4 = False
        scene.stylerig.final_quality = True
        assert bpy.ops.stylerig.batch_render(wait=True) == {"FINISHED"}, operators.BatchState.message
        job = operators.BatchState.job
        assert job.final_quality and (job.status, job.done) == ("done", 1), job.summary()
        frame = png.decode_png(job.frame_path(2))
        with shipped_engine.connect() as c:
            h = c.new_face(3, 0.7)
            tg = targets(job.params, job.modes_used)
            final = next(iter(c.batch_render(h, tg, size=SIZE, final_quality=True, rest=rest))).image
            plain = next(iter(c.batch_render(h, tg, size=SIZE, rest=rest))).image
        np.testing.assert_array_equal(frame, final)  # the checkbox asked the engine for final quality, with the rest
        # (the pixels may equal the plain edit's: each face keeps its best reading, which can be the first; the
        # request itself carried the flag, job.final_quality above, and tests/test_final_quality.py checks the loop)
        assert plain.shape == frame.shape
        assert bpy.ops.stylerig.reset_rig() == {"FINISHED"}
        assert "rest" not in R.face_spec(rig)  # the rig no longer shows the match
    finally:
        stylerig_addon.unregister()


def test_render_blend_final_quality(shipped_engine, tmp_path):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    with shipped_engine.connect() as c:
        geometry = c.geometry()
    rig = R.build_rig(*geometry, seed=7, psi=0.7)
    animate(rig, 2)
    blend = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    out = tmp_path / "rb"
    args = ("render-blend", str(blend), "--frames", "2", "--out", str(out), "--size", str(SIZE), "--no-mp4",
            "--engine", json.dumps(shipped_engine.listen))
    res = run_cli(*args, "--final-quality")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "1 rendered, 0 already there" in res.stdout
    assert json.loads((out / "render.json").read_text())["final_quality"] is True
    final = png.decode_png(out / "frame_0002.png")
    res = run_cli(*args, "--final-quality")  # resumes: the frame is there, made with the same option
    assert res.returncode == 0 and "0 rendered, 1 already there" in res.stdout
    res = run_cli(*args)  # the plain render is another picture: rendered again
    assert res.returncode == 0 and "1 rendered, 0 already there" in res.stdout
    assert json.loads((out / "render.json").read_text())["final_quality"] is False
    job = BatchJob.from_scene(bpy.context.scene, rig, out, frames=[2], size=SIZE)
    assert not np.array_equal(png.decode_png(job.frame_path(2)), final)
