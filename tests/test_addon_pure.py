"""The add-on's pure parts (no bpy, no engine): lighting <-> SH, layout, PNG frames, frame ranges, Live Link CSV
parsing and name mapping, the camera mirror, and the add-on's import hygiene."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from stylerig_addon import lighting, livelink, png
from stylerig_addon.batch import parse_frames
from stylerig_addon.layout import Layout, targets
from stylerig_addon.session import EngineSettings, NotConfigured, Session

from stylerig_engine.render import shading

REPO = Path(__file__).resolve().parents[1]


# ---- lighting ---------------------------------------------------------------------------------------------
def test_sun_sh_matches_the_engines_directional_light():
    rng = np.random.default_rng(0)
    for _ in range(5):
        d = rng.normal(size=3)
        colour = rng.uniform(0.2, 1.0, 3)
        ours = lighting.lights_to_sh(d[None], 0.7 * colour[None], ambient=[0.3, 0.2, 0.1])
        ref = shading.sh_directional(torch.tensor(d), intensity=0.7, colour=tuple(colour), dtype=torch.float64)
        ref = ref.view(9, 3)
        ref[0] += torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64)
        np.testing.assert_allclose(ours, ref.reshape(27).numpy(), atol=1e-12)


def test_shading_matches_the_engine():
    rng = np.random.default_rng(1)
    n = rng.normal(size=(50, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    albedo, sh = rng.uniform(0, 1, (50, 3)), rng.normal(size=27)
    ref = torch.as_tensor(albedo) * shading.sh_shade(torch.as_tensor(n), torch.as_tensor(sh).view(9, 3))
    np.testing.assert_allclose(lighting.shade(n, albedo, sh), ref.numpy(), atol=1e-12)
    np.testing.assert_allclose(lighting.sh_basis(n), shading.sh_basis(torch.as_tensor(n)).numpy(), atol=1e-12)


def test_the_dome_is_well_conditioned_and_makes_a_uniform_light_from_positive_strengths():
    b = lighting.sun_sh(lighting.DOME_DIRECTIONS)
    assert np.linalg.cond(b) < 2.0
    assert np.all(np.linalg.solve(b, np.eye(9)[0]) > 0)
    assert len({name for name, _, _ in lighting.DOME}) == 9


def test_any_illumination_vector_round_trips_through_ambient_plus_dome():
    rng = np.random.default_rng(2)
    for scale in (0.1, 1.0, 10.0):
        for _ in range(50):
            sh = scale * rng.normal(size=27)
            irradiance, ambient = lighting.sh_to_lights(sh)
            assert irradiance.min() >= 0  # real lights: strengths and colours never negative
            assert np.allclose(irradiance.min(axis=0), 0)  # in each channel the weakest dome light is off
            strength, colour = lighting.split_irradiance(irradiance)
            assert colour.min() >= 0 and colour.max() <= 1 + 1e-12
            back = lighting.lights_to_sh(lighting.DOME_DIRECTIONS, lighting.join_irradiance(strength, colour), ambient)
            np.testing.assert_allclose(back, sh, atol=1e-9 * scale)


def test_a_pure_ambient_light_leaves_the_dome_dark():
    sh = np.zeros(27)
    sh[:3] = (0.9, 0.8, 0.7)
    irradiance, ambient = lighting.sh_to_lights(sh)
    np.testing.assert_allclose(irradiance, 0, atol=1e-12)
    np.testing.assert_allclose(ambient, (0.9, 0.8, 0.7))


def test_inverse_needs_nine_directions():
    with pytest.raises(ValueError, match="nine"):
        lighting.sh_to_lights(np.zeros(27), lighting.DOME_DIRECTIONS[:5])
    with pytest.raises(ValueError, match="zero length"):
        lighting.sun_sh(np.zeros((1, 3)))


# ---- layout ------------------------------------------------------------------------------------------------
def _engine_layout():
    from stylerig_engine.facemodel import load_default_model
    from stylerig_engine.params import layout_for_model

    return layout_for_model(load_default_model())


def test_layout_mirrors_the_engines():
    ref = _engine_layout()
    lay = Layout.from_description(ref.describe())
    assert lay.dim == ref.dim and lay.names == ref.names
    for b in ("identity", "albedo", "expression", "rotation", "translation", "illumination"):
        assert lay.slice(b) == ref.slice(b)
    assert Layout.from_description(lay.dumps()).describe() == lay.describe()
    lo, hi = lay.range("expression")
    assert lo.min() == 0 and hi.max() == 1
    lo, hi = lay.range("identity")
    np.testing.assert_allclose(hi, 4.0)
    p = lay.neutral()
    assert np.all(p[lay.slice("expression")] == 0)
    assert set(targets(p, ["pose", "expression"])) == {"pose", "expression"}
    with pytest.raises(ValueError, match="entries"):
        lay.check(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        lay.check(np.full(lay.dim, np.nan))
    bad = ref.describe()
    bad["blocks"] = [b for b in bad["blocks"] if b["name"] != "illumination"]
    with pytest.raises(ValueError, match="illumination"):
        Layout.from_description(bad)


# ---- PNG frames --------------------------------------------------------------------------------------------
def test_png_round_trip_text_and_damage(tmp_path):
    img = np.random.default_rng(3).integers(0, 256, (17, 23, 4), dtype=np.uint8)
    path = tmp_path / "f.png"
    png.write_png(path, img, {"stylerig": "abc"})
    info = png.png_info(path)
    assert info == {"width": 23, "height": 17, "text": {"stylerig": "abc"}}
    np.testing.assert_array_equal(png.decode_png(path), img)
    from PIL import Image

    with Image.open(path) as im:  # a real PNG, as other tools read it
        np.testing.assert_array_equal(np.asarray(im), img)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    assert png.png_info(path) is None
    path.write_bytes(data[:40] + bytes([data[40] ^ 1]) + data[41:])  # a flipped bit
    assert png.png_info(path) is None
    assert png.png_info(tmp_path / "missing.png") is None
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError):
        png.encode_png(np.zeros((4, 4), np.uint8))


def test_parse_frames():
    assert parse_frames("1-5") == [1, 2, 3, 4, 5]
    assert parse_frames("1-9:4") == [1, 5, 9]
    assert parse_frames("3,1-2,3") == [3, 1, 2]
    for bad in ("5-1", "1-4:0", "x"):
        with pytest.raises(ValueError):
            parse_frames(bad)


# ---- Live Link Face CSV ------------------------------------------------------------------------------------
ICT_NAMES = ["browInnerUp_L", "browInnerUp_R", "eyeBlink_L", "eyeBlink_R", "jawOpen", "jawLeft", "jawRight",
             "mouthLeft", "mouthSmile_L", "mouthSmile_R", "cheekPuff_L", "cheekPuff_R"]


def test_arkit_names_map_to_model_names():
    m = livelink.map_columns(["EyeBlinkLeft", "MouthSmileRight", "JawOpen", "JawLeft", "MouthLeft", "BrowInnerUp",
                              "CheekPuff", "TongueOut", "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "Foo"],
                             ICT_NAMES)
    assert m.shapes == {"EyeBlinkLeft": ["eyeBlink_L"], "MouthSmileRight": ["mouthSmile_R"], "JawOpen": ["jawOpen"],
                        "JawLeft": ["jawLeft"], "MouthLeft": ["mouthLeft"],
                        "BrowInnerUp": ["browInnerUp_L", "browInnerUp_R"], "CheekPuff": ["cheekPuff_L", "cheekPuff_R"]}
    assert m.head == {"HeadPitch": 0, "HeadYaw": 1, "HeadRoll": 2}
    assert m.unused == ["TongueOut", "LeftEyeYaw"] and m.unknown == ["Foo"]
    assert "unknown columns (ignored): Foo" in m.report()


def write_take(path: Path, n: int = 90, rate: int = 60, extra: tuple[str, ...] = ("Bogus",)) -> Path:
    cols = ["Timecode", "BlendShapeCount", *livelink.ARKIT_NAMES, "HeadYaw", "HeadPitch", "HeadRoll",
            *livelink.EYE_COLUMNS, *extra]
    lines = [",".join(cols)]
    for i in range(n):
        s, f = divmod(i, rate)
        blend = [f"{0.5 + 0.5 * math.sin(i / 10 + k):.5f}" for k in range(len(livelink.ARKIT_NAMES))]
        head = [f"{0.3 * math.sin(i / 20):.5f}", "0.1", f"{-0.05 * i / n:.5f}"]
        lines.append(",".join([f"10:00:{s:02d}:{f:02d}.500", "61", *blend, *head, *["0.0"] * 6,
                               *[f"{i}" for _ in extra]]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_live_link_csv(tmp_path):
    take = livelink.read_csv(write_take(tmp_path / "take.csv"))
    assert take.rate == 60 and len(take.times) == 90
    np.testing.assert_allclose(take.times, np.arange(90) / 60)
    assert take.curves["JawOpen"][10] == pytest.approx(0.5 + 0.5 * math.sin(1 + 17), abs=1e-5)
    assert "Bogus" in take.curves  # numeric unknown columns are kept (and reported by the mapping)
    frames, samples = livelink.resample(take, 24.0, start_frame=5)
    assert frames[0] == 5 and len(frames) == int(89 / 60 * 24) + 1
    assert samples["HeadYaw"][12] == pytest.approx(0.3 * math.sin(30 / 20), abs=1e-4)  # 0.5 s = row 30


def test_live_link_csv_problems_are_reported_not_fatal(tmp_path):
    p = tmp_path / "odd.csv"
    p.write_text("EyeBlinkLeft,Notes,JawOpen\n0.1,hello,0.2\n0.3,,x\n0.5,bye,0.6\n")
    take = livelink.read_csv(p)
    assert take.rate == 60 and any("no Timecode" in w for w in take.warnings)
    assert any("Notes" in w for w in take.warnings)
    np.testing.assert_allclose(take.curves["JawOpen"], [0.2, 0.4, 0.6])  # the bad value interpolated
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        livelink.read_csv(empty)


# ---- the Blender version differences (the real APIs are exercised by the install matrix) -----------------------
def test_compat_picks_each_versions_api():
    from types import SimpleNamespace as NS

    from stylerig_addon import compat

    assert compat.sequencer_strips(NS(strips="4.4+", sequences="old")) == "4.4+"
    assert compat.sequencer_strips(NS(sequences="4.2")) == "4.2"
    five, four = NS(media_type="IMAGE", file_format="PNG"), NS(file_format="PNG")
    compat.set_movie_output(five)
    compat.set_movie_output(four)
    assert (five.media_type, five.file_format, four.file_format) == ("VIDEO", "FFMPEG", "FFMPEG")
    assert not hasattr(four, "media_type")

    class OldMaterial:  # 4.x: materials.new() has no tree until use_nodes is switched on
        node_tree = None

        @property
        def use_nodes(self):
            return self.node_tree is not None

        @use_nodes.setter
        def use_nodes(self, on):
            self.node_tree = "tree" if on else None

    assert compat.ensure_node_tree(OldMaterial()) == "tree"
    assert compat.ensure_node_tree(NS(node_tree="5.0 tree")) == "5.0 tree"  # use_nodes never touched


def test_a_blender_of_the_matrix_that_cannot_be_installed_fails_with_pips_words(tmp_path, monkeypatch):
    import blender_matrix

    monkeypatch.setenv("STYLERIG_CACHE", str(tmp_path))
    with pytest.raises(blender_matrix.BlenderUnavailable, match=r"cannot make a Blender 0\.0\.1 environment") as e:
        blender_matrix.venv_python("0.0.1")  # no such bpy: what a missing network or wheel looks like
    assert "bpy==0.0.1" in str(e.value) and str(tmp_path) in str(e.value)
    assert not (tmp_path / "blender" / f"bpy-0.0.1-py{sys.version_info[0]}.{sys.version_info[1]}").exists()
    with pytest.raises(blender_matrix.BlenderUnavailable, match="no Python"):
        blender_matrix.venv_python(f"4.2.23@{tmp_path / 'no-python'}")


# ---- camera mirror, sessions, import hygiene -------------------------------------------------------------------
def test_portrait_camera_mirror_equals_the_engines():
    from stylerig_engine.facemodel import load_default_model
    from stylerig_engine.render.cameras import portrait_camera

    pytest.importorskip("bpy")  # rig.py needs mathutils
    from stylerig_addon.rig import portrait_camera as mirror

    m = load_default_model()
    lm = np.asarray(m.neutral)[np.asarray(m.landmarks)]
    ref = portrait_camera(lm, 256)
    cam = mirror(lm)
    assert cam["focal"] == pytest.approx(ref.focal, rel=1e-9)
    np.testing.assert_allclose(cam["position"], ref.position, atol=1e-9)


def test_session_without_an_engine_says_what_to_do():
    s = Session()
    with pytest.raises(NotConfigured, match="start one"):
        s.connect(EngineSettings(source="LOCAL"))
    with pytest.raises(NotConfigured, match="address"):
        s.connect(EngineSettings(source="CONNECT"))
    assert not s.stop_local()


def test_local_engine_that_fails_to_start_reports_its_log(tmp_path):
    from stylerig_addon.engine_process import EngineStartError, LocalEngine

    with pytest.raises(EngineStartError, match="did not start") as e:
        LocalEngine.start([sys.executable, "-c", "import sys; print('boom', file=sys.stderr)"], [],
                          log_path=tmp_path / "log", timeout=30)
    assert "boom" in str(e.value)
    with pytest.raises(EngineStartError, match="cannot run"):
        LocalEngine.start([str(tmp_path / "no-such-stylerig")], ["serve"], timeout=5)


def test_addon_imports_without_bpy_and_without_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules["bpy"] = None  # any import of bpy fails
        sys.modules["torch"] = None
        import stylerig_addon
        from stylerig_addon import client, protocol, lighting, layout, livelink, png, session, batch, live
        from stylerig_addon import compat, streaming
        assert client.StreamingRenderer is streaming.StreamingRenderer  # its old home still answers
        assert callable(stylerig_addon.register)
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_addon_needs_only_stdlib_numpy_and_blender():
    from stylerig_engine.blender.package import check_imports

    assert check_imports(REPO / "addon") == []


def test_check_imports_flags_torch(tmp_path):
    from stylerig_engine.blender.package import check_imports

    (tmp_path / "bad.py").write_text("import os\nimport numpy as np\nfrom torch import nn\nfrom . import x\n")
    assert check_imports(tmp_path) == ["bad.py:3: import torch"]
