"""Safetensors checkpoints of DFR and RigNets: weights + a JSON description in the metadata, atomic writes.

A rig is only meaningful on the generator it was trained for: its description records that generator's
identity (`generator_identity`: name, resolution, W+ shape, a SHA-256 of its weights), in every checkpoint and
in the rig directory's `*.config.json`. `stamp_generator(directory, generator, name)` (command: `stylerig rig
stamp DIR --generator SPEC`) adds it to a rig trained before identities were recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..fileio import atomic_write
from ..params import ParamLayout
from .networks import DFR, RigNet

FORMAT = "stylerig-rig-checkpoint"


class CheckpointError(ValueError):
    pass


class GeneratorMismatch(CheckpointError):
    """The rig was trained for another generator."""


class UnverifiedRigWarning(UserWarning):
    """The rig does not record which generator it was trained for."""


# ---- which generator a rig belongs to ---------------------------------------------------------------------------
def generator_identity(generator: Any, name: str | None = None) -> dict:
    """What identifies `generator` for a rig: {"name", "resolution", "num_ws", "w_dim", "z_dim",
    "weights_sha256", "hash_of"}.

    The hash covers every tensor of the state_dict (names, dtypes, shapes, bytes) — for the synthetic face world
    it covers its recipe instead (class, seed, face model, W+ shape): the world's buffers are computed at
    construction, so their last bits may depend on the machine's BLAS, and its semantics do not depend on the
    image resolution. A generator that is not a torch module has no hash (None)."""
    identity: dict[str, Any] = {
        "name": name or type(generator).__name__,
        "resolution": int(generator.img_resolution),
        "num_ws": int(generator.num_ws),
        "w_dim": int(generator.w_dim),
        "z_dim": int(generator.z_dim),
    }
    from ..synthetic import SyntheticGenerator

    h = hashlib.sha256()
    model = getattr(generator, "model", None)
    if isinstance(generator, SyntheticGenerator):
        recipe = {"class": "SyntheticGenerator", "seed": int(generator.seed),
                  "model": getattr(model, "name", None), "num_vertices": int(getattr(model, "num_vertices", 0)),
                  "num_ws": identity["num_ws"], "w_dim": identity["w_dim"]}
        h.update(json.dumps(recipe, sort_keys=True).encode())
        identity.update(weights_sha256=h.hexdigest(), hash_of="synthetic-world recipe")
    elif isinstance(generator, torch.nn.Module):
        for key, t in sorted(generator.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        identity.update(weights_sha256=h.hexdigest(), hash_of="state_dict")
    else:
        identity.update(weights_sha256=None, hash_of=None)
    return identity


def _describe(identity: Mapping) -> str:
    return (f"{identity.get('name')!r} ({identity.get('resolution')} px, W+ {identity.get('num_ws')} x "
            f"{identity.get('w_dim')}, weights {str(identity.get('weights_sha256'))[:12]})")


def identity_differences(trained: Mapping, running: Mapping) -> list[str]:
    """What differs between the generator a rig was trained for and the one it is asked to serve ([] if it is the
    same network)."""
    out = []
    for key in ("num_ws", "w_dim"):
        if trained.get(key) is not None and trained.get(key) != running.get(key):
            out.append(f"{key} {trained.get(key)} != {running.get(key)}")
    a, b = trained.get("weights_sha256"), running.get("weights_sha256")
    if a and b and a != b:
        out.append(f"weights {a[:12]} != {b[:12]}")
    elif not (a and b) and trained.get("name") != running.get("name"):
        out.append(f"name {trained.get('name')!r} != {running.get('name')!r} (no weight hash to compare)")
    return out


def check_generator(trained: Mapping | None, running: Mapping, *, where: Any = "the rig",
                    allow_mismatch: bool = False) -> list[str]:
    """Refuse a rig on a generator it was not trained for. Returns warnings (a rig without a recorded identity,
    a mismatch allowed by `allow_mismatch`). A different W+ shape is always refused: the networks cannot
    even run."""
    if not trained:
        msg = (f"{where} does not record which generator it was trained for; serving it on {_describe(running)} "
               "unchecked. Record it with `stylerig rig stamp DIR --generator SPEC`.")
        warnings.warn(msg, UnverifiedRigWarning, stacklevel=2)
        return [msg]
    diffs = identity_differences(trained, running)
    if not diffs:
        return []
    msg = (f"{where} was trained for generator {_describe(trained)}, not for {_describe(running)}: "
           + "; ".join(diffs))
    shape_differs = (trained.get("num_ws"), trained.get("w_dim")) != (running.get("num_ws"), running.get("w_dim"))
    if shape_differs or not allow_mismatch:
        raise GeneratorMismatch(msg + ("" if shape_differs else
                                       " (--allow-generator-mismatch serves it anyway, for experts)"))
    warnings.warn(msg, UnverifiedRigWarning, stacklevel=2)
    return [msg]


def save_network(net: DFR | RigNet, path: str | os.PathLike, *, extra: dict | None = None,
                 dtype: torch.dtype = torch.float32, generator: Mapping | None = None) -> None:
    """Write `net` (weights in `dtype`, buffers in float32) with everything needed to rebuild it, and the
    identity of the generator it was trained for (`generator_identity`), when given."""
    desc: dict[str, Any]
    if isinstance(net, DFR):
        desc = dict(kind="dfr", hidden=net.net[0].out_features, layer_code=net.layer_code)
    else:
        desc = dict(kind="rignet", mode=net.mode, layers=list(net.layers), latent_dim=net.encoder.weight.shape[-1],
                    hidden=net.decoder_hidden.weight.shape[-1], shared_code=net.context is not None)
    desc.update(format=FORMAT, num_ws=net.num_ws, w_dim=net.w_dim, layout=net.layout.describe(), extra=extra or {})
    if generator is not None:
        desc["generator"] = dict(generator)
    params = {name for name, _ in net.named_parameters()}
    tensors = {k: (v.to(dtype) if k in params else v.float()).contiguous().cpu() for k, v in net.state_dict().items()}
    with atomic_write(path) as f:
        f.write(st_save(tensors, metadata={"stylerig": json.dumps(desc)}))


def read_description(path: str | os.PathLike) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from e
    if "stylerig" not in meta:
        raise CheckpointError(f"{path}: no stylerig description in the metadata; not a DFR/RigNet checkpoint")
    try:
        desc = json.loads(meta["stylerig"])
    except ValueError as e:
        raise CheckpointError(f"{path}: the stylerig description is not valid JSON ({e})") from e
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        fmt = desc.get("format") if isinstance(desc, dict) else None
        raise CheckpointError(f"{path}: unknown checkpoint format {fmt!r}")
    return desc


def load_network(path: str | os.PathLike, device: str | torch.device = "cpu") -> DFR | RigNet:
    """Rebuild a DFR or RigNet from its checkpoint (float32)."""
    path = Path(path)
    desc = read_description(path)
    try:
        layout = ParamLayout.from_description(desc["layout"])
        if desc["kind"] == "dfr":
            net: DFR | RigNet = DFR(layout, num_ws=desc["num_ws"], w_dim=desc["w_dim"], hidden=desc["hidden"],
                                   layer_code=desc.get("layer_code", 0))
        elif desc["kind"] == "rignet":
            net = RigNet(desc["mode"], layout, num_ws=desc["num_ws"], w_dim=desc["w_dim"],
                         layers=tuple(desc["layers"]), latent_dim=desc["latent_dim"], hidden=desc["hidden"],
                         shared_code=bool(desc.get("shared_code", False)))
        else:
            raise CheckpointError(f"{path}: unknown network kind {desc['kind']!r}")
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: bad network description ({type(e).__name__}: {e})") from e
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[k] = f.get_tensor(k).float()
    except Exception as e:  # truncated or corrupt tensor data
        raise CheckpointError(f"{path}: cannot read the tensors ({e})") from e
    try:
        missing, unexpected = net.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise CheckpointError(f"{path}: tensors do not fit the described network ({e})") from e
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing tensors {missing}, unexpected {unexpected}")
    return net.to(device).eval()


# ---- recording the generator in a trained rig ------------------------------------------------------------------
def rig_files(directory: str | os.PathLike) -> list[Path]:
    """The network checkpoints of a rig directory: dfr.safetensors and rignet-<mode>.safetensors."""
    directory = Path(directory)
    nets = [directory / "dfr.safetensors"] + sorted(directory.glob("rignet-*.safetensors"))
    return [p for p in nets if p.is_file() and not p.name.endswith(".state.safetensors")]


def read_generator(directory: str | os.PathLike) -> dict | None:
    """The generator identity recorded in a rig directory: in its checkpoints, else in its *.config.json, else
    None. Raises CheckpointError when the files disagree (networks trained for different generators)."""
    found: dict[str, dict] = {}
    for path in rig_files(directory):
        ident = read_description(path).get("generator")
        if ident is None:
            config = path.with_name(path.name.replace(".safetensors", ".config.json"))
            if config.is_file():
                try:
                    ident = json.loads(config.read_text()).get("generator")
                except (ValueError, AttributeError) as e:
                    raise CheckpointError(f"{config}: not a JSON object ({e})") from e
        if isinstance(ident, dict):
            found[path.name] = ident
    if not found:
        return None
    first_name, first = next(iter(found.items()))
    for name, ident in found.items():
        diffs = identity_differences(first, ident)
        if diffs:
            raise CheckpointError(f"{directory}: {first_name} and {name} were trained for different generators: "
                                  + "; ".join(diffs))
    return first


def stamp_generator(directory: str | os.PathLike, generator: Any, name: str, *, configs: bool = True) -> dict:
    """Record the identity of `generator` (named by its spec, e.g. "synthetic:64") in every checkpoint and
    (with `configs`) *.config.json of a rig directory, for a rig trained before identities were recorded. The
    weights stay bit-identical (only the safetensors metadata is rewritten). Returns the identity.

    Stamp the configs of a finished or shipped rig only: `TrainConfig.load` (--resume) reads the configs of a
    run directory as they were written."""
    identity = generator_identity(generator, name)
    files = rig_files(directory)
    if not files:
        raise CheckpointError(f"{directory}: no dfr.safetensors or rignet-*.safetensors to stamp")
    for path in files:
        desc = read_description(path)
        if desc.get("num_ws") != identity["num_ws"] or desc.get("w_dim") != identity["w_dim"]:
            raise GeneratorMismatch(f"{path} has W+ {desc.get('num_ws')} x {desc.get('w_dim')}, generator "
                                    f"{_describe(identity)} has W+ {identity['num_ws']} x {identity['w_dim']}")
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        desc = json.loads(meta["stylerig"])
        desc["generator"] = identity
        meta["stylerig"] = json.dumps(desc)
        with atomic_write(path) as out:
            out.write(st_save(tensors, metadata=meta))
        config = path.with_name(path.name.replace(".safetensors", ".config.json"))
        if configs and config.is_file():
            doc = json.loads(config.read_text())
            doc["generator"] = identity
            with atomic_write(config, "w") as out:
                json.dump(doc, out, indent=1)
    return identity
