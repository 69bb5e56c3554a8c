"""Loading generators: NVIDIA pickles through the restricted unpickler, rosinality .pt, our safetensors."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from stylerig_engine.stylegan2 import weights as wmod
from stylerig_engine.stylegan2.networks import Generator
from stylerig_engine.stylegan2.nvidia_pickle import (
    UnsafePickleError,
    UnsupportedNetworkError,
    load_nvidia_pickle,
    restricted_load,
)
from stylerig_engine.stylegan2.rosinality import load_rosinality

FIXTURE = "fixtures/stylegan2/sg3_r64_ref.npz"  # in the shared_dir


def tiny_generator(seed: int = 0, res: int = 16, z_dim: int = 32, **synthesis_kwargs) -> Generator:
    torch.manual_seed(seed)
    kw = {"channel_base": 256, "channel_max": 32}
    kw.update(synthesis_kwargs)
    G = Generator(z_dim=z_dim, w_dim=z_dim, img_resolution=res, img_channels=3,
                  mapping_kwargs={"num_layers": 2}, synthesis_kwargs=kw)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength") or (name.endswith("bias") and "affine" not in name):
                p.copy_(torch.randn_like(p) * 0.5)
        G.mapping.w_avg.copy_(torch.randn(z_dim))
    return G.eval()


def same_outputs(G1: Generator, G2: Generator, atol: float = 0.0) -> bool:
    z = torch.from_numpy(np.random.RandomState(0).randn(2, G1.z_dim))
    with torch.no_grad():
        a = G1(z, psi=0.7)
        b = G2(z, psi=0.7)
    return a.shape == b.shape and bool((a - b).abs().max() <= atol)


# ----------------------------------------------------------------------------------------------------------
# Writing pickles in NVIDIA's torch_utils.persistence format with stand-in modules


class FakeNvidiaModules:
    """Installs stand-ins for `torch_utils.persistence` and `dnnlib.util` in sys.modules so that pickle
    writes the same global references as NVIDIA's code. Nothing here is used when loading."""

    def __init__(self, monkeypatch):
        persistence = types.ModuleType("torch_utils.persistence")
        torch_utils = types.ModuleType("torch_utils")

        def _reconstruct_persistent_obj(meta):  # only referenced by name in the pickle stream
            raise AssertionError("the stand-in must never be called")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
        torch_utils.persistence = persistence
        dnnlib = types.ModuleType("dnnlib")
        util = types.ModuleType("dnnlib.util")

        class EasyDict(dict):
            pass

        EasyDict.__module__ = "dnnlib.util"
        EasyDict.__qualname__ = "EasyDict"
        util.EasyDict = EasyDict
        dnnlib.util = util
        for name, mod in [("torch_utils", torch_utils), ("torch_utils.persistence", persistence),
                          ("dnnlib", dnnlib), ("dnnlib.util", util)]:
            monkeypatch.setitem(sys.modules, name, mod)
        self.reconstruct = _reconstruct_persistent_obj
        self.EasyDict = EasyDict


class Persistent:
    """Pickles as NVIDIA's persistent classes do: _reconstruct_persistent_obj(meta)."""

    def __init__(self, fake: FakeNvidiaModules, class_name: str, state: dict, module_src: str):
        self.fake, self.class_name, self.state, self.module_src = fake, class_name, state, module_src

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "module_src": self.module_src, "class_name": self.class_name,
                    "state": self.state}
        return (self.fake.reconstruct, (meta,))


def persistent_tree(fake, module: torch.nn.Module, module_src: str, init_kwargs=None) -> Persistent:
    """Our module as NVIDIA would pickle theirs: its __dict__ with submodules as persistent objects,
    floats as numpy scalars (as NVIDIA's np.sqrt gains are), plus _init_args/_init_kwargs."""
    state = {}
    for key, value in module.__dict__.items():
        if key == "_modules":
            value = collections.OrderedDict(
                (k, persistent_tree(fake, v, module_src)) for k, v in value.items())
        elif key.startswith("_") and key not in ("_parameters", "_buffers", "_non_persistent_buffers_set"):
            if not isinstance(value, (dict, set, bool, type(None))):
                continue
            if isinstance(value, dict) and key == "_config":
                continue
        elif isinstance(value, float):
            value = np.float64(value)
        state[key] = value
    state["_init_args"] = ()
    state["_init_kwargs"] = fake.EasyDict(init_kwargs or {})
    return Persistent(fake, type(module).__name__, state, module_src)


def nvidia_init_kwargs(fake, G: Generator, layout: str) -> dict:
    cfg = G.config
    top = {k: cfg[k] for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")}
    mapping = fake.EasyDict(cfg["mapping_kwargs"])
    if layout == "ada":  # stylegan2-ada-pytorch: Generator(..., mapping_kwargs, synthesis_kwargs)
        return dict(top, mapping_kwargs=mapping, synthesis_kwargs=fake.EasyDict(cfg["synthesis_kwargs"]))
    # stylegan3's networks_stylegan2: Generator(..., mapping_kwargs, **synthesis_kwargs)
    return dict(top, mapping_kwargs=mapping, **cfg["synthesis_kwargs"], fused_modconv_default="inference_only")


def write_nvidia_pickle(path: Path, fake, G: Generator, layout: str = "ada", protocol: int = 4,
                        module_src: str = "# NVIDIA's networks.py would be here\n") -> Path:
    g_ema = persistent_tree(fake, G, module_src, nvidia_init_kwargs(fake, G, layout))
    disc = Persistent(fake, "Discriminator", {"_parameters": collections.OrderedDict(w=torch.nn.Parameter(
        torch.randn(3, 3))), "_buffers": collections.OrderedDict(), "_modules": collections.OrderedDict()},
        module_src)
    data = {"G": g_ema, "D": disc, "G_ema": g_ema, "augment_pipe": None,
                "training_set_kwargs": fake.EasyDict(path="ffhq.zip", resolution=G.img_resolution, xflip=True)}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


@pytest.fixture
def fake(monkeypatch):
    return FakeNvidiaModules(monkeypatch)


# ----------------------------------------------------------------------------------------------------------
# NVIDIA pickles


@pytest.mark.parametrize("layout", ["ada", "sg3"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_nvidia_pickle_roundtrip(tmp_path, fake, layout, protocol):
    G = tiny_generator(num_fp16_res=2, conv_clamp=256)
    path = write_nvidia_pickle(tmp_path / "net.pkl", fake, G, layout=layout, protocol=protocol)
    loaded = load_nvidia_pickle(path)
    assert loaded.config["synthesis_kwargs"] == {"channel_base": 256, "channel_max": 32, "num_fp16_res": 2,
                                                     "conv_clamp": 256.0}
    assert loaded.config["mapping_kwargs"]["num_layers"] == 2
    assert same_outputs(G, loaded)  # identical tensors, identical function
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_module_src_is_never_executed(tmp_path, fake):
    marker = tmp_path / "module_src_ran"
    src = f"open({str(marker)!r}, 'w').write('executed')\nraise SystemExit(1)\n"
    path = write_nvidia_pickle(tmp_path / "net.pkl", fake, tiny_generator(), module_src=src)
    G = load_nvidia_pickle(path)
    assert G.img_resolution == 16 and not marker.exists()
    data = restricted_load(path)
    assert data["G_ema"].module_src == src and data["G_ema"].class_name == "Generator"
    assert data["training_set_kwargs"].resolution == 16  # EasyDict attribute access


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _evil_payloads(marker: Path):
    cmd = f"touch {marker}"
    return {
        "os.system": _Evil(os.system, cmd),
        "builtins.exec": _Evil(exec, f"open({str(marker)!r}, 'w')"),
        "builtins.eval": _Evil(eval, f"open({str(marker)!r}, 'w')"),
        "builtins.open": _Evil(open, str(marker), "w"),
        "subprocess.Popen": _Evil(subprocess.Popen, ["touch", str(marker)]),
        "builtins.getattr": _Evil(getattr, _Evil(__import__, "os"), "system"),
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "builtins.eval", "builtins.open",
                                  "subprocess.Popen", "builtins.getattr"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, fake, name):
    marker = tmp_path / "pwned"
    payload = _evil_payloads(marker)[name]
    top = tmp_path / "top.pkl"
    top.write_bytes(pickle.dumps(payload))
    # The same payload hidden inside an otherwise valid NVIDIA pickle (in a module's state).
    G = tiny_generator()
    tree = persistent_tree(fake, G, "")
    tree.state["_modules"]["mapping"].state["evil"] = payload
    nested = tmp_path / "nested.pkl"
    nested.write_bytes(pickle.dumps({"G_ema": tree}))
    for path in (top, nested):
        with pytest.raises(UnsafePickleError, match="refusing") as info:
            load_nvidia_pickle(path)
        attr = name.rpartition(".")[2]
        assert attr in str(info.value)
        with pytest.raises(UnsafePickleError):
            wmod.load_generator(path)
    assert not marker.exists()


def test_refused_globals_are_named(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(collections.Counter(a=1)))
    with pytest.raises(UnsafePickleError, match=r"collections\.Counter"):
        restricted_load(path)


def test_build_and_newobj_only_for_allowed_types(tmp_path):
    # GLOBAL torch.Size, EMPTY_TUPLE, REDUCE -> Size(); then BUILD with a dict: refused.
    stream = b"\x80\x02ctorch\nSize\n)R}b."
    with pytest.raises(UnsafePickleError, match="BUILD"):
        restricted_load(io.BytesIO(stream))
    # numpy arrays of object dtype would let a pickle build arbitrary objects: refused.
    with pytest.raises(UnsafePickleError, match="object"):
        restricted_load(io.BytesIO(pickle.dumps(np.array([1, "a"], dtype=object))))
    # plain numeric numpy arrays and scalars are fine
    value = restricted_load(io.BytesIO(pickle.dumps({"a": np.arange(4, dtype=np.float32), "s": np.float64(2.5)})))
    assert value["a"].tolist() == [0, 1, 2, 3] and value["s"] == 2.5


def test_persistent_ids_are_refused():
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "x" if isinstance(obj, str) and obj == "ref" else None

    buf = io.BytesIO()
    P(buf).dump(["ref"])
    buf.seek(0)
    with pytest.raises(UnsafePickleError, match="persistent"):
        restricted_load(buf)


def test_tensor_storages_are_loaded_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    out = restricted_load(io.BytesIO(pickle.dumps({"t": t, "p": torch.nn.Parameter(t.clone())})))
    assert torch.equal(out["t"], t) and isinstance(out["p"], torch.nn.Parameter)
    assert calls and all(c is True for c in calls)


def test_tensorflow_and_stylegan3_pickles_are_rejected_clearly(tmp_path, fake, monkeypatch):
    tflib = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __reduce__(self):
            return (Network, ())

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    tflib.Network = Network
    monkeypatch.setitem(sys.modules, "dnnlib.tflib.network", tflib)
    path = tmp_path / "tf.pkl"
    path.write_bytes(pickle.dumps((Network(), Network(), Network())))
    with pytest.raises(UnsupportedNetworkError, match="TensorFlow"):
        load_nvidia_pickle(path)
    # A StyleGAN3 synthesis network has 'input' and 'L0_36_512'-style layers, no b4..bN blocks.
    tree = persistent_tree(fake, tiny_generator(), "")
    tree.state["_modules"]["synthesis"].state["_modules"] = collections.OrderedDict(
        input=Persistent(fake, "SynthesisInput", {}, ""), L0_36_512=Persistent(fake, "SynthesisLayer", {}, ""))
    path.write_bytes(pickle.dumps({"G_ema": tree}))
    with pytest.raises(UnsupportedNetworkError, match="StyleGAN3"):
        load_nvidia_pickle(path)


@pytest.mark.skipif(not os.environ.get("STYLERIG_NVIDIA_REPO"), reason="set STYLERIG_NVIDIA_REPO to a checkout "
                    "of NVlabs/stylegan2-ada-pytorch or NVlabs/stylegan3 to test a pickle written by NVIDIA's code")
def test_pickle_written_by_nvidias_own_code(tmp_path):
    """Runs NVIDIA's code in a subprocess (their modules never enter this process) to write a real network
    pickle the way their training loop does, then loads it with ours and compares NVIDIA's fp32 output."""
    script = textwrap.dedent("""
        import copy, pickle, sys, warnings, numpy as np, torch
        warnings.filterwarnings('ignore')
        sys.path.insert(0, sys.argv[1])
        try:
            import pkg_resources  # stylegan3's ops import parse_version from it
        except ImportError:
            import re, types
            sys.modules['pkg_resources'] = types.SimpleNamespace(
                parse_version=lambda v: tuple(int(x) for x in re.findall(r'\\d+', v)[:3]))
        import dnnlib
        try:
            from training.networks_stylegan2 import Generator, Discriminator
        except ImportError:
            from training.networks import Generator, Discriminator
        torch.manual_seed(0)
        kw = dict(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3,
                  mapping_kwargs=dnnlib.EasyDict(num_layers=4))
        syn = dict(channel_base=1024, channel_max=64, num_fp16_res=2, conv_clamp=256)
        try:
            G = Generator(**kw, synthesis_kwargs=dnnlib.EasyDict(syn))
        except TypeError:
            G = Generator(**kw, **syn)
        with torch.no_grad():
            for n, b in G.named_buffers():
                if 'noise_const' in n or 'w_avg' in n: b.copy_(torch.randn_like(b))
            for n, p in G.named_parameters():
                if 'noise_strength' in n or n.endswith('bias'): p.copy_(torch.randn_like(p) * 0.3)
        D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=1024, channel_max=64)
        snap = dict(training_set_kwargs=dnnlib.EasyDict(path='x.zip'), augment_pipe=None)
        for name, m in [('G', G), ('D', D), ('G_ema', G)]:
            snap[name] = copy.deepcopy(m).eval().requires_grad_(False).cpu()
        pickle.dump(snap, open(sys.argv[2], 'wb'))
        z = torch.from_numpy(np.random.RandomState(1).randn(2, 64))
        with torch.no_grad():
            ws = G.eval().mapping(z, None, truncation_psi=0.6)
            img = G.synthesis(ws, noise_mode='const', force_fp32=True)
        np.savez(sys.argv[3], z=z.numpy(), ws=ws.numpy(), img=img.numpy())
    """)
    pkl, ref = tmp_path / "nv.pkl", tmp_path / "ref.npz"
    subprocess.run([sys.executable, "-c", script, os.environ["STYLERIG_NVIDIA_REPO"], str(pkl), str(ref)],
                   check=True, timeout=300)
    G = load_nvidia_pickle(pkl)
    r = np.load(ref)
    with torch.no_grad():
        ws = G.mapping(torch.from_numpy(r["z"]), psi=0.6)
        img = G.synthesis(ws, "const")
    assert (ws - torch.from_numpy(r["ws"])).abs().max() < 1e-5
    assert (img - torch.from_numpy(r["img"])).abs().max() < 1e-4
    assert G.config["synthesis_kwargs"]["num_fp16_res"] == 2


# ----------------------------------------------------------------------------------------------------------
# rosinality checkpoints


def to_rosinality(G: Generator) -> dict[str, torch.Tensor]:
    """Our (NVIDIA-named) state as rosinality's Generator names it (written independently of the loader)."""
    sd = G.state_dict()
    out = {}
    for i in range(G.mapping.num_layers):
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    out["input.input"] = sd["synthesis.b4.const"][None]
    noise_idx = 0

    def conv(src, dst, upsample):
        nonlocal noise_idx
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        if upsample:
            out[f"{dst}.conv.blur.kernel"] = sd[f"{src}.resample_filter"] * 4
        out[f"noises.noise_{noise_idx}"] = sd[f"{src}.noise_const"][None, None]
        noise_idx += 1

    def rgb(src, dst, upsample):
        out[f"{dst}.conv.weight"] = sd[f"{src}.torgb.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.torgb.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.torgb.affine.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.torgb.bias"].reshape(1, -1, 1, 1)
        if upsample:
            out[f"{dst}.upsample.kernel"] = sd[f"{src}.resample_filter"] * 4

    conv("synthesis.b4.conv1", "conv1", False)
    rgb("synthesis.b4", "to_rgb1", False)
    for k, res in enumerate(G.synthesis.block_resolutions[1:]):
        conv(f"synthesis.b{res}.conv0", f"convs.{2 * k}", True)
        conv(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", False)
        rgb(f"synthesis.b{res}", f"to_rgbs.{k}", True)
    return out


def test_rosinality_checkpoint_matches_nvidia_fixture(tmp_path, shared_dir):
    if not (shared_dir / FIXTURE).exists():
        pytest.skip(f"{shared_dir / FIXTURE} not available")
    ref = np.load(shared_dir / FIXTURE)
    G = Generator(z_dim=256, w_dim=256, img_resolution=64, mapping_kwargs={"num_layers": 8},
                  synthesis_kwargs={"channel_base": 4096, "channel_max": 128})
    G.load_state_dict({k[6:]: torch.from_numpy(ref[k]) for k in ref.files if k.startswith("param/")})
    ckpt = {"g_ema": to_rosinality(G), "latent_avg": G.mapping.w_avg.clone()[None],
            "args": __import__("argparse").Namespace(size=64, channel_multiplier=2)}
    torch.save(ckpt, tmp_path / "ros.pt")
    loaded = load_rosinality(tmp_path / "ros.pt")
    with torch.no_grad():
        ws = loaded.mapping(torch.from_numpy(ref["z"]), psi=0.7)
        img = loaded.synthesis(ws, "const")
    assert (ws - torch.from_numpy(ref["ws_psi07"])).abs().max() < 1e-4
    assert (img - torch.from_numpy(ref["img_psi07_const"])).abs().max() < 1e-4
    assert loaded.config["synthesis_kwargs"]["channel_base"] == 4096  # channels 128 @ 32 px
    assert isinstance(wmod.load_generator(tmp_path / "ros.pt"), Generator)


def test_rosinality_rejects_foreign_state(tmp_path):
    G = tiny_generator()
    sd = to_rosinality(G)
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"g_ema": sd, "latent_avg": torch.zeros(32)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="extra.weight"):
        load_rosinality(tmp_path / "bad.pt")


# ----------------------------------------------------------------------------------------------------------
# Our safetensors format, load_generator specs, convert


def test_safetensors_roundtrip_and_convert_command(tmp_path, fake):
    from stylerig_engine.cli import main

    G = tiny_generator(conv_clamp=256)
    path = wmod.save_generator(G, tmp_path / "g.safetensors")
    loaded = wmod.load_generator(path)
    assert loaded.config == G.config and same_outputs(G, loaded)
    pkl = write_nvidia_pickle(tmp_path / "net.pkl", fake, G)
    assert main(["weights", "convert", str(pkl), str(tmp_path / "c.safetensors")]) == 0
    assert same_outputs(G, wmod.load_generator(tmp_path / "c.safetensors"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["stylerig.format"] == "stylegan2-generator"
    assert json.loads(meta["stylerig.config"])["img_resolution"] == 16


def test_load_generator_specs(monkeypatch):
    a = wmod.load_generator("random:8")
    b = wmod.load_generator("random:8")
    assert a.img_resolution == 8 and a.num_ws == 4 and same_outputs(a, b)
    c = wmod.load_generator("random:8:16384:7")
    assert not same_outputs(a, c, atol=1e-3)
    for bad in ["random:33", "random:x", "no-such-network", "missing.pkl"]:
        with pytest.raises(wmod.WeightsError):
            wmod.load_generator(bad)
    # The hook for other generators (e.g. the synthetic one): one line to register.
    monkeypatch.setitem(wmod.GENERATOR_FACTORIES, "synthetic", lambda spec: tiny_generator())
    assert wmod.load_generator("synthetic").img_resolution == 16


def test_random_generator_has_nvidias_real_size():
    G = wmod.load_generator("random:1024")
    assert G.num_ws == 18 and G.z_dim == 512 and G.w_dim == 512
    assert G.synthesis.b1024.conv1.weight.shape == (32, 32, 3, 3)
    assert G.synthesis.b64.conv1.weight.shape == (512, 512, 3, 3)
    # 30.37M parameters: the count of NVIDIA's own Generator built with the same arguments
    assert sum(p.numel() for p in G.parameters()) == 30_370_060
