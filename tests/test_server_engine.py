"""The engine facade (stylerig_engine.engine) with tiny stand-ins for the generator, face model, DFR, RigNets.

The stand-ins live here (and are imported by the other server tests and by `stylerig serve --generator
py:test_server_engine:make_generator`) so the server can be tested before the real parts exist.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from stylerig_engine.engine import (
    Engine,
    EngineError,
    NotAvailable,
    UnknownHandle,
    build_engine,
    load_rig,
    seed_to_z,
)
from stylerig_engine.facemodel.model import MorphableModel
from stylerig_engine.params import ParamLayout, layout_for_model


# ---- stand-ins ------------------------------------------------------------------------------------------
class TinyGenerator(nn.Module):
    """StyleGAN2's interface in miniature: deterministic, fast, with hooks to slow it down or hold it."""

    def __init__(self, z_dim: int = 8, w_dim: int = 6, num_ws: int = 4, resolution: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.z_dim, self.w_dim, self.num_ws, self.img_resolution = z_dim, w_dim, num_ws, resolution
        self.register_buffer("a", torch.randn(z_dim, w_dim, generator=g) / z_dim**0.5)
        self.register_buffer("w_avg", 0.1 * torch.randn(w_dim, generator=g))
        self.register_buffer("c", torch.randn(num_ws * w_dim, 3 * 4 * 4, generator=g))
        self.register_buffer("pattern", torch.randn(3, resolution, resolution, generator=g))
        self.delay = 0.0  # seconds per synthesis call
        self.gate: threading.Event | None = None  # when set to an Event, synthesis waits for it
        self.entered = threading.Event()  # set whenever a synthesis call starts
        self.batches: list[int] = []
        self.last_z: torch.Tensor | None = None

    def mapping(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        self.last_z = z.detach().clone()
        w = torch.tanh(z @ self.a)
        w = self.w_avg + psi * (w - self.w_avg)
        return w[:, None, :].repeat(1, self.num_ws, 1)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        assert noise_mode == "const"
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(20), "test gate never opened"
        if self.delay:
            time.sleep(self.delay)
        self.batches.append(len(ws))
        x = (ws.flatten(1) @ self.c).view(-1, 3, 4, 4)
        x = nn.functional.interpolate(x, size=self.img_resolution, mode="nearest")
        return torch.tanh(0.5 * x + 0.3 * self.pattern)


def tiny_model() -> MorphableModel:
    v = 8
    rng = np.random.default_rng(0)
    neutral = rng.normal(size=(v, 3)).astype(np.float32)
    polygon_vertices = np.array([0, 1, 2, 3, 4, 5, 6, 7, 2, 3, 4], np.int32)  # two quads and a triangle
    model = MorphableModel(
        name="tiny",
        neutral=neutral,
        identity_basis=rng.normal(size=(3, v, 3)).astype(np.float32),
        expression_basis=rng.normal(size=(2, v, 3)).astype(np.float32),
        expression_names=["jawOpen", "eyeBlink_L"],
        expression_prior="blendshape",
        albedo_mean=np.full((v, 3), 0.5, np.float32),
        albedo_basis=rng.normal(size=(1, v, 3)).astype(np.float32),
        albedo_names=["tone"],
        triangles=np.array([[0, 1, 2], [0, 2, 3], [2, 3, 4]], np.int32),
        polygon_start=np.array([0, 4, 8, 11], np.int32),
        polygon_vertices=polygon_vertices,
        uvs=rng.uniform(size=(v, 2)).astype(np.float32),
        polygon_uvs=polygon_vertices.copy(),
        landmarks=(np.arange(68) % v).astype(np.int32),
        regions={},
    )
    model.validate()
    return model


class TinyRig:
    """DFR + RigNets stand-ins: fit is linear in the mean latent; edit shifts ws by a function of each target
    (and of the rest it is given, if any) and records the order in which it composed the modes."""

    def __init__(
        self, generator: TinyGenerator, layout: ParamLayout, modes=("pose", "expression", "illumination")
    ):
        g = torch.Generator().manual_seed(1)
        self.m = torch.randn(generator.w_dim, layout.dim, generator=g)
        self.n = {mode: torch.randn(layout.dim, generator.w_dim, generator=g) / layout.dim for mode in modes}
        self.modes = tuple(modes)
        self.calls: list[list[str]] = []

    def fit(self, ws: torch.Tensor) -> torch.Tensor:
        return ws.mean(1) @ self.m

    def edit(self, ws: torch.Tensor, targets: dict, rest: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(list(targets))
        for mode, p in targets.items():
            ws = ws + (p @ self.n[mode])[:, None, :]
        if rest is not None:  # as the real rig, rest changes the edit (which keys it corrects)
            ws = ws - 0.5 * (rest @ self.n[next(iter(targets))])[:, None, :]
        return ws

    # make `edit` advertise its modes like a loaded RigNet set would
    @property
    def edit_fn(self):
        def edit(ws, targets, rest=None):
            return self.edit(ws, targets, rest)

        edit.modes = self.modes
        return edit


def make_generator(device: str = "cpu") -> TinyGenerator:
    """`--generator py:test_server_engine:make_generator`: a stand-in carrying its face model and layout."""
    gen = TinyGenerator()
    gen.model = tiny_model()
    gen.layout = layout_for_model(gen.model)
    return gen


def make_engine(*, rig: bool = False, max_batch: int = 8, **kwargs) -> Engine:
    gen = TinyGenerator(**kwargs)
    model = tiny_model()
    layout = layout_for_model(model)
    if rig:
        r = TinyRig(gen, layout)
        e = Engine(gen, model, layout, fit=r.fit, edit=r.edit_fn, max_batch=max_batch)
        e.rig = r
        return e
    return Engine(gen, model, layout, max_batch=max_batch)


# ---- tests --------------------------------------------------------------------------------------------
def test_new_face_uses_nvidias_seed_to_z():
    e = make_engine()
    h = e.new_face(seed=1234, psi=0.5)
    expected = np.random.RandomState(1234).randn(1, e.z_dim)
    np.testing.assert_array_equal(seed_to_z(1234, e.z_dim), expected)
    np.testing.assert_allclose(e.generator.last_z.numpy(), expected.astype(np.float32))
    ws = e.latent(h)
    assert ws.shape == (e.num_ws, e.w_dim)
    ref = e.generator.mapping(torch.from_numpy(expected).float(), psi=0.5)[0]
    torch.testing.assert_close(ws, ref)
    assert torch.equal(e.latent(e.new_face(1234, 0.5)), ws)  # deterministic
    assert not torch.equal(e.latent(e.new_face(1235, 0.5)), ws)
    with pytest.raises(EngineError, match="seed"):
        e.new_faces([-1])
    with pytest.raises(EngineError, match="psi"):
        e.new_faces([1], psi=float("nan"))


def test_render_formats_sizes_and_orientation():
    e = make_engine()
    h = e.new_face(7)
    x = e.synthesize(e.latents([h]))
    assert x.shape == (1, 3, 16, 16)
    rgba = e.render([h])
    assert rgba.shape == (1, 16, 16, 4) and rgba.dtype == np.uint8
    assert (rgba[..., 3] == 255).all()
    expected = np.round((x[0].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255)
    np.testing.assert_allclose(rgba[0, ..., :3], expected, atol=1)
    f16 = e.render([h], fmt="float16")
    assert f16.dtype == np.float16 and f16.shape == (1, 16, 16, 4)
    np.testing.assert_allclose(f16[0, ..., :3].astype(np.float32), rgba[0, ..., :3] / 255, atol=3e-3)
    lin = e.render([h], fmt="float16", colorspace="linear")
    assert (lin[..., :3] <= f16[..., :3] + 1e-3).all() and (lin[..., 3] == 1).all()
    flipped = e.render([h], origin="bottom")
    np.testing.assert_array_equal(flipped[0], rgba[0, ::-1])
    big, small = e.render([h], size=40), e.render([h], size=8)
    assert big.shape == (1, 40, 40, 4) and small.shape == (1, 8, 8, 4)
    jpegs = e.render([h, h], fmt="jpeg", size=32)
    assert len(jpegs) == 2 and all(j[:2] == b"\xff\xd8" for j in jpegs)
    import io

    from PIL import Image

    decoded = np.asarray(Image.open(io.BytesIO(jpegs[0])))
    assert decoded.shape == (32, 32, 3)
    for bad in ({"fmt": "png"}, {"size": 0}, {"size": 10**6}, {"origin": "left"}, {"colorspace": "xyz"}):
        with pytest.raises(EngineError):
            e.render([h], **bad)


def test_render_batches_generator_calls():
    e = make_engine(max_batch=8)
    handles = e.new_faces(list(range(20)))
    e.generator.batches.clear()
    images = e.render(handles)
    assert images.shape[0] == 20
    assert e.generator.batches == [8, 8, 4]
    one_by_one = np.stack([e.render([h])[0] for h in handles])
    np.testing.assert_array_equal(images, one_by_one)


def test_missing_dfr_and_rignet_are_clear_errors():
    e = make_engine()
    h = e.new_face(0)
    with pytest.raises(NotAvailable, match="no DFR loaded"):
        e.fit(h)
    with pytest.raises(NotAvailable, match="no RigNet loaded"):
        e.render([h], {"pose": np.zeros(e.layout.dim)})
    with pytest.raises(EngineError, match="unknown control mode"):
        e.render([h], {"smile": np.zeros(e.layout.dim)})
    with pytest.raises(NotAvailable, match="no dfr.safetensors"):
        load_rig("/nonexistent/rig")
    assert e.info()["fit"] is False and e.info()["edit_modes"] == []


def test_fit_and_edit_compose_in_stylerig_order():
    e = make_engine(rig=True)
    h = e.new_face(3)
    p = e.fit(h)
    assert p.shape == (e.layout.dim,) and p.dtype == np.float32
    np.testing.assert_allclose(e.fit([h, h]), np.stack([p, p]))
    plain = e.render([h])
    target = p.copy()
    target[e.layout.slice("rotation")] += 0.3
    edited = e.render([h], {"illumination": target, "pose": target, "expression": target})
    assert not np.array_equal(plain, edited)
    assert e.rig.calls[-1] == ["pose", "expression", "illumination"]
    with pytest.raises(NotAvailable, match="no RigNet for mode"):
        e.render([h], {"albedo": target})
    with pytest.raises(EngineError, match="shape"):
        e.render([h], {"pose": target[:-1]})
    bad = target.copy()
    bad[0] = np.nan
    with pytest.raises(EngineError, match="NaN"):
        e.render([h], {"pose": bad})
    assert e.info()["edit_modes"] == ["pose", "expression", "illumination"]


def test_rest_reaches_the_edit_and_is_checked():
    e = make_engine(rig=True, max_batch=2)
    hs = e.new_faces([1, 2, 3])
    p = e.fit(hs)
    rest = p[0] + 0.1
    with_rest = e.render(hs, {"expression": p}, rest=rest, fmt="float16")
    # (D,) is every face's; the edit gets it per face, split like the targets (max_batch 2: two calls)
    ws_rest = e.rig.edit(e.latents(hs), {"expression": torch.from_numpy(p)}, torch.from_numpy(rest).expand(3, -1))
    np.testing.assert_allclose(with_rest, e.to_images(e.generator.synthesis(ws_rest), fmt="float16"), atol=1e-3)
    assert not np.array_equal(with_rest, e.render(hs, {"expression": p}, fmt="float16"))
    np.testing.assert_array_equal(e.render(hs, rest=rest), e.render(hs))  # no targets: nothing is edited
    for bad, message in ((rest[:-1], "rest must have shape"), (np.stack([rest] * 2), "rest must have shape"),
                         (np.full_like(rest, np.nan), "rest contains NaN"), (np.array(["x"] * len(rest)), "numeric")):
        with pytest.raises(EngineError, match=message):
            e.render(hs, {"expression": p}, rest=bad)
    # an edit hook that does not take `rest` finds keys its own way: rest is not passed to it
    plain = Engine(e.generator, e.model, e.layout, fit=e.rig.fit,
                   edit=lambda ws, targets: e.rig.edit(ws, targets), max_batch=2)
    np.testing.assert_array_equal(plain.render([plain.upload(e.latent(hs[0]))], {"expression": p[0]}, rest=rest),
                                  e.render(hs[:1], {"expression": p[0]}))


def test_geometry_describes_the_rig():
    e = make_engine()
    meta, arrays = e.geometry()
    m = e.model
    np.testing.assert_array_equal(arrays["vertices"], m.neutral)
    np.testing.assert_array_equal(arrays["polygon_start"], [0, 4, 8, 11])
    assert arrays["polygon_vertices"].dtype == np.int32
    assert arrays["expression_basis"].shape == (2, 8, 3) and arrays["identity_basis"].shape == (3, 8, 3)
    assert arrays["landmarks"].shape == (68,) and arrays["uvs"].shape == (8, 2)
    assert meta["expression_names"] == ["jawOpen", "eyeBlink_L"]
    assert ParamLayout.from_description(meta["layout"]).names == e.layout.names
    assert "centimetres" in meta["conventions"]["units"]
    meta1, arrays1 = e.geometry(identity_modes=1, half=True)
    assert arrays1["identity_basis"].shape == (1, 8, 3) and arrays1["expression_basis"].dtype == np.float16
    assert meta1["identity_modes"] == 1


def test_latent_upload_checks_and_lru():
    e = make_engine()
    e.max_handles = 3
    ws = np.random.default_rng(0).normal(size=(e.num_ws, e.w_dim)).astype(np.float32)
    h = e.upload(ws)
    np.testing.assert_array_equal(e.latent(h).numpy(), ws)
    hw = e.upload(ws[0])  # W broadcast to every layer
    assert torch.equal(e.latent(hw), torch.from_numpy(ws[0]).expand(e.num_ws, -1))
    for bad, msg in (
        (ws[:, :-1], "shape"),
        (np.full_like(ws, np.inf), "NaN or inf"),
        (np.array(["a"]), "numeric"),
    ):
        with pytest.raises(EngineError, match=msg):
            e.upload(bad)
    for _ in range(3):
        e.upload(ws)
    with pytest.raises(UnknownHandle):
        e.latent(h)  # evicted, least recently used
    assert e.num_handles == 3
    last = e.upload(ws)
    assert e.release([last, "nope"]) == 1
    with pytest.raises(UnknownHandle, match="unknown latent handle"):
        e.render([last])


def test_build_engine_from_a_python_factory():
    e = build_engine("py:test_server_engine:make_generator")
    assert e.resolution == 16 and e.model.name == "tiny" and e.layout.dim == 3 + 1 + 2 + 3 + 3 + 27
    assert e.render(e.new_faces([0, 1])).shape == (2, 16, 16, 4)
    with pytest.raises(EngineError, match="oracle-fit"):
        build_engine("py:test_server_engine:make_generator", oracle_fit=True)
    with pytest.raises(NotAvailable):
        build_engine("py:test_server_engine:make_generator", rignet="/tmp/none")


def test_synthetic_generator():
    e = build_engine("synthetic:64", oracle_fit=True)
    h = e.new_face(0)
    img = e.render([h], size=32)
    assert img.shape == (1, 32, 32, 4) and img.dtype == np.uint8 and img[..., :3].std() > 5
    p = e.fit(h)  # the oracle: exact ground truth of the synthetic world
    np.testing.assert_allclose(p, e.generator.true_params(e.latents([h]))[0].numpy())
    assert e.geometry()[1]["vertices"].shape == (e.model.num_vertices, 3)


def test_stylegan2_generator():
    from stylerig_engine.engine import load_generator

    gen = load_generator("random:16")
    model = tiny_model()
    e = Engine(gen, model, layout_for_model(model))
    h = e.new_face(5, psi=0.5)
    z = torch.from_numpy(np.random.RandomState(5).randn(1, e.z_dim)).float()
    torch.testing.assert_close(e.latent(h), gen.mapping(z, None, psi=0.5)[0])
    img = e.render([h], size=8)
    assert img.shape == (1, 8, 8, 4) and img.dtype == np.uint8


def test_one_home_for_the_composition_order():
    from stylerig_engine.params import COMPOSITION_ORDER, CONTROL_MODES
    from stylerig_engine.rig import editing

    assert sorted(COMPOSITION_ORDER) == sorted(CONTROL_MODES)
    assert editing.COMPOSITION_ORDER == COMPOSITION_ORDER
    e = make_engine(rig=True)
    e.edit_fn.modes = tuple(reversed(COMPOSITION_ORDER))
    assert e.edit_modes == COMPOSITION_ORDER  # listed (and targets checked) in the order the rig composes them


# ---- a rig knows the generator it was trained for ---------------------------------------------------------
@pytest.fixture(scope="module")
def stamped_rig(tmp_path_factory):
    """A copy of the shipped rig with the identity of the synthetic world it was trained on (synthetic:64)."""
    import shutil

    from stylerig_engine.engine import load_generator
    from stylerig_engine.rig import SHIPPED_RIG
    from stylerig_engine.rig.checkpoints import stamp_generator

    d = tmp_path_factory.mktemp("rig") / "synthetic"
    shutil.copytree(SHIPPED_RIG, d)
    before = {p.name: load_network_state(p) for p in d.glob("*.safetensors")}
    identity = stamp_generator(d, load_generator("synthetic:32"), "synthetic:64")
    after = {p.name: load_network_state(p) for p in d.glob("*.safetensors")}
    for name, tensors in before.items():  # only the metadata changed
        assert tensors.keys() == after[name].keys()
        for k, t in tensors.items():
            assert torch.equal(t, after[name][k]), (name, k)
    return d, identity


def load_network_state(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_stamped_rig_records_its_generator_in_checkpoints_and_configs(stamped_rig):
    import json

    from stylerig_engine.rig.checkpoints import read_description, read_generator

    d, identity = stamped_rig
    assert identity["name"] == "synthetic:64" and (identity["num_ws"], identity["w_dim"]) == (14, 512)
    assert identity["hash_of"] == "synthetic-world recipe" and len(identity["weights_sha256"]) == 64
    for net in ("dfr", "rignet-pose", "rignet-expression", "rignet-illumination"):
        assert read_description(d / f"{net}.safetensors")["generator"] == identity
        assert json.loads((d / f"{net}.config.json").read_text())["generator"] == identity
    assert read_generator(d) == identity


def test_shipping_a_rig_keeps_its_generator(stamped_rig, tmp_path):
    from stylerig_engine.rig.checkpoints import read_description, read_generator
    from stylerig_engine.rig.commands import ship_rig

    d, identity = stamped_rig
    ship_rig(d, tmp_path / "ship", ["pose"])
    assert read_generator(tmp_path / "ship") == identity
    assert read_description(tmp_path / "ship" / "rignet-pose.safetensors")["generator"] == identity


def test_engine_serves_a_rig_only_on_its_generator(stamped_rig, caplog):
    from stylerig_engine.engine import WrongGenerator

    d, identity = stamped_rig
    # the synthetic world at another resolution is the same latent space: accepted, silently
    with caplog.at_level("WARNING", logger="stylerig.engine"):
        e = build_engine("synthetic:32", rignet=str(d))
    assert not caplog.records
    assert e.info()["rig_generator"] == identity and e.info()["generator"]["weights_sha256"] == identity[
        "weights_sha256"
    ]
    # another network with the same W+ shape (14 x 512): refused at start, with both identities named
    with pytest.raises(WrongGenerator, match=r"trained for generator 'synthetic:64'.*not for 'random:256:512'"):
        build_engine("random:256:512", rignet=str(d))
    # ... unless an expert insists: served, with a warning
    with caplog.at_level("WARNING", logger="stylerig.engine"):
        e = build_engine("random:256:512", rignet=str(d), allow_generator_mismatch=True)
    assert e.edit_modes and "trained for generator 'synthetic:64'" in caplog.text
    # a different W+ shape can never work: refused even with the override
    with pytest.raises(WrongGenerator, match="W\\+ 14 x 512.*W\\+ 18 x 512"):
        build_engine("random:1024:1024", rignet="shipped", allow_generator_mismatch=True)


def test_a_rig_without_an_identity_loads_with_a_warning(caplog, tmp_path):
    import json

    from stylerig_engine.rig import SHIPPED_RIG, load_network, save_network

    for path in SHIPPED_RIG.glob("*.safetensors"):  # the shipped rig as rigs were saved before identities
        save_network(load_network(path), tmp_path / path.name)
    for path in SHIPPED_RIG.glob("*.config.json"):
        config = json.loads(path.read_text())
        config.pop("generator", None)
        (tmp_path / path.name).write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="stylerig.engine"):
        e = build_engine("random:256:512", rignet=str(tmp_path))
    assert "does not record which generator it was trained for" in caplog.text
    assert "stylerig rig stamp" in caplog.text
    assert e.info()["rig_generator"] is None and e.edit_modes == ("pose", "expression", "illumination")


def test_stamping_checks_the_w_plus_shape(stamped_rig, tmp_path):
    import shutil

    from stylerig_engine.engine import load_generator
    from stylerig_engine.rig.checkpoints import GeneratorMismatch, stamp_generator

    d = tmp_path / "rig"
    shutil.copytree(stamped_rig[0], d)
    with pytest.raises(GeneratorMismatch, match="W\\+ 14 x 512"):
        stamp_generator(d, load_generator("random:16"), "random:16")
