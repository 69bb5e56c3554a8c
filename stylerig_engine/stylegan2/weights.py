"""Generator weights: our safetensors format, NVIDIA's pretrained networks, and `load_generator(spec)`.

Specs understood by `load_generator`:

* a path: ``*.pkl`` (NVIDIA network pickle, read by the restricted unpickler), ``*.pt`` / ``*.pth``
  (rosinality stylegan2-pytorch checkpoint, or our state dict), ``*.safetensors`` (our format);
* a registered name: ``ffhq-1024``, ``ffhq-512``, ``ffhq-256`` (NVIDIA's networks, after
  ``stylerig weights fetch NAME``; the file's SHA-256 recorded at fetch time is checked on every load);
* ``random:RES`` or ``random:RES:CHANNEL_BASE``: a randomly initialised network of NVIDIA's real size at that
  resolution (`networks.config_f`), seeded (``random:RES:CHANNEL_BASE:SEED``, seed 0 by default);
* any name in `GENERATOR_FACTORIES` (a one-line hook: ``GENERATOR_FACTORIES['synthetic'] = make_synthetic``).

Our format is one ``.safetensors`` file: the state dict under NVIDIA's names plus metadata
``stylerig.format = stylegan2-generator``, ``stylerig.format_version = 1`` and ``stylerig.config`` (the JSON of
`Generator.config`). A ``.json`` file beside it with the config is read when the metadata has none.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import fileio
from .networks import Generator, config_f

FORMAT = "stylegan2-generator"
FORMAT_VERSION = "1"

NGC_BASE_URL = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
BASE_URL_ENV = "STYLERIG_STYLEGAN2_BASE_URL"

LICENSE_NOTICE = """\
NVIDIA's pretrained StyleGAN2 networks are licensed under the NVIDIA Source Code License-NC
(https://github.com/NVlabs/stylegan3/blob/main/LICENSE.txt and the NGC model page
https://catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/stylegan2).
They and anything derived from them may be used NON-COMMERCIALLY ONLY, i.e. for research or evaluation
purposes; redistribution must carry the license. stylerig itself is MIT licensed; these weights are not."""


class WeightsError(RuntimeError):
    pass


@dataclass(frozen=True)
class PretrainedNetwork:
    name: str
    filename: str
    resolution: int
    description: str
    sha256: str | None = None  # pinned digest, when known; otherwise the digest of the first fetch is recorded

    def url(self, base_url: str | None = None) -> str:
        base = base_url or os.environ.get(BASE_URL_ENV) or NGC_BASE_URL
        return base.rstrip("/") + "/" + self.filename


PRETRAINED: dict[str, PretrainedNetwork] = {
    net.name: net
    for net in (
        PretrainedNetwork("ffhq-1024", "stylegan2-ffhq-1024x1024.pkl", 1024, "StyleGAN2 config F, FFHQ 1024x1024"),
        PretrainedNetwork("ffhq-512", "stylegan2-ffhq-512x512.pkl", 512, "StyleGAN2, FFHQ 512x512"),
        PretrainedNetwork("ffhq-256", "stylegan2-ffhq-256x256.pkl", 256, "StyleGAN2, FFHQ 256x256"),
    )
}

# name -> factory(spec) -> Generator, for generators that are not files (e.g. 'synthetic').
GENERATOR_FACTORIES: dict[str, Callable[[str], Generator]] = {}


def _synthetic_world(spec: str):
    from ..synthetic import make_synthetic

    return make_synthetic(spec)


GENERATOR_FACTORIES["synthetic"] = _synthetic_world


# ----------------------------------------------------------------------------------------------------------
# Our format


def save_generator(G: Generator, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write `G` as one safetensors file (state dict + config in the metadata), atomically."""
    from safetensors.torch import save

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in G.state_dict().items()}
    metadata = {"stylerig.format": FORMAT, "stylerig.format_version": FORMAT_VERSION,
                "stylerig.config": json.dumps(G.config, sort_keys=True)}
    metadata.update(extra_metadata or {})
    data = save(state, metadata=metadata)
    with fileio.atomic_write(path) as f:
        f.write(data)
    return path


def load_safetensors_generator(path: str | os.PathLike) -> Generator:
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        names = list(f.keys())
        state = {k: f.get_tensor(k) for k in names}
    config_text = metadata.get("stylerig.config")
    if config_text is None:
        sidecar = path.with_suffix(".json")
        if not sidecar.exists():
            raise WeightsError(f"{path}: no generator config in the metadata and no {sidecar.name} beside it")
        config_text = sidecar.read_text()
    if metadata.get("stylerig.format", FORMAT) != FORMAT:
        raise WeightsError(f"{path}: format {metadata.get('stylerig.format')!r} is not {FORMAT!r}")
    G = Generator(**json.loads(config_text))
    _load_state_strict(G, state, str(path))
    return G.eval().requires_grad_(False)


def _load_state_strict(G: Generator, state: dict[str, torch.Tensor], what: str) -> None:
    ours = G.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if missing or unexpected:
        raise WeightsError(f"{what}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for name, value in state.items():
        if tuple(value.shape) != tuple(ours[name].shape):
            raise WeightsError(f"{what}: {name} has shape {tuple(value.shape)}, expected {tuple(ours[name].shape)}")
    G.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)


def load_torch_checkpoint(path: str | os.PathLike) -> Generator:
    """A ``.pt``: rosinality's checkpoint, or {'config': ..., 'state_dict': ...} in our layout."""
    from .rosinality import _load_checkpoint, is_rosinality_state, load_rosinality

    ckpt = _load_checkpoint(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("g_ema"), dict) and is_rosinality_state(ckpt["g_ema"]):
        return load_rosinality(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) and isinstance(ckpt.get("state_dict"), dict):
        G = Generator(**ckpt["config"])
        _load_state_strict(G, ckpt["state_dict"], str(path))
        return G.eval().requires_grad_(False)
    raise WeightsError(f"{path}: neither a rosinality checkpoint (g_ema + latent_avg) nor a stylerig checkpoint")


def load_file(path: str | os.PathLike) -> Generator:
    """Load a generator file by its kind (extension, then content)."""
    from .nvidia_pickle import load_nvidia_pickle

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_safetensors_generator(path)
    if suffix in (".pt", ".pth", ".ckpt") or zipfile.is_zipfile(path):
        return load_torch_checkpoint(path)
    if suffix in (".pkl", ".pickle"):
        return load_nvidia_pickle(path)
    raise WeightsError(f"{path}: unknown generator file type (expected .pkl, .pt or .safetensors)")


# ----------------------------------------------------------------------------------------------------------
# Pretrained networks: fetch, record, verify


def weights_dir() -> Path:
    return fileio.cache_dir() / "stylegan2"


def _records_path() -> Path:
    return weights_dir() / "fetched.json"


def fetched_records() -> dict[str, dict[str, Any]]:
    path = _records_path()
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _write_record(name: str, record: dict[str, Any]) -> None:
    records = fetched_records()
    records[name] = record
    with fileio.atomic_write(_records_path(), "w") as f:
        json.dump(records, f, indent=2, sort_keys=True)


def _confirm_license(accept_license: bool, confirm: Callable[[str], bool] | None) -> None:
    print(LICENSE_NOTICE, file=sys.stderr)
    if accept_license:
        return
    if confirm is None:
        if not sys.stdin.isatty():
            raise WeightsError("the license was not accepted: pass --accept-license (non-interactive session)")

        def confirm(prompt: str) -> bool:
            return input(prompt).strip().lower() in ("y", "yes")
    if not confirm("Accept these terms and download? [y/N] "):
        raise WeightsError("the license was not accepted; nothing was downloaded")


def fetch(
    name: str,                          # a key of PRETRAINED
    dest_dir: str | os.PathLike | None = None,  # where the files go (default: the cache, weights_dir())
    accept_license: bool = False,       # skip the interactive license question
    base_url: str | None = None,        # override the download location ($STYLERIG_STYLEGAN2_BASE_URL)
    progress: bool = True,              # tqdm progress bar
    confirm: Callable[[str], bool] | None = None,  # license question (default: input() on a TTY)
    convert: bool = True,               # also store the generator in our safetensors format for fast loads
) -> Path:
    """Download a pretrained network (resumable), validate it by loading it, record its SHA-256.

    The download lands in ``<file>.unverified`` (``.part`` while incomplete) and is renamed to its final name
    only after the restricted unpickler has built a generator of the expected resolution from it.
    """
    from .nvidia_pickle import load_nvidia_pickle

    net = _pretrained(name)
    dest_dir = Path(dest_dir) if dest_dir is not None else weights_dir()
    final = dest_dir / net.filename
    record = fetched_records().get(name)
    if final.exists() and record and Path(record["path"]) == final.resolve():
        verify(name)
        return final
    _confirm_license(accept_license, confirm)
    url = net.url(base_url)
    staging = dest_dir / (net.filename + ".unverified")
    fileio.download(url, staging, sha256=net.sha256, progress=progress)
    try:
        G = load_nvidia_pickle(staging)
    except Exception as e:
        staging.unlink(missing_ok=True)
        raise WeightsError(f"{url}: the downloaded file is not a usable StyleGAN2 network ({e}); removed") from e
    if G.img_resolution != net.resolution:
        staging.unlink(missing_ok=True)
        raise WeightsError(f"{url}: expected a {net.resolution}px generator, got {G.img_resolution}px; removed")
    digest = fileio.sha256_file(staging)
    os.replace(staging, final)
    record = {"path": str(final.resolve()), "sha256": digest, "url": url, "fetched": time.strftime("%Y-%m-%d %H:%M:%S"),
              "size": final.stat().st_size, "license": "NVIDIA Source Code License-NC (non-commercial)"}
    if convert:
        converted = final.with_suffix(".safetensors")
        save_generator(G, converted, {"stylerig.source_sha256": digest, "stylerig.source_url": url})
        record["converted"] = str(converted.resolve())
        record["converted_sha256"] = fileio.sha256_file(converted)
    _write_record(name, record)
    return final


def _pretrained(name: str) -> PretrainedNetwork:
    if name not in PRETRAINED:
        raise WeightsError(f"unknown network {name!r}; known: {', '.join(PRETRAINED)}")
    return PRETRAINED[name]


def verify(name: str) -> dict[str, Any]:
    """Check the recorded SHA-256 of a fetched network's files; return its record."""
    record = fetched_records().get(name)
    if record is None:
        raise WeightsError(f"{name} has not been fetched: run `stylerig weights fetch {name}`")
    net = _pretrained(name)
    path = Path(record["path"])
    if not path.exists():
        raise WeightsError(f"{name}: {path} is gone; run `stylerig weights fetch {name}` again")
    digest = fileio.sha256_file(path)
    if digest != record["sha256"] or (net.sha256 and digest != net.sha256):
        raise WeightsError(f"{name}: {path} has SHA-256 {digest}, recorded {record['sha256']}: the file changed")
    converted = record.get("converted")
    if converted and Path(converted).exists() and fileio.sha256_file(converted) != record.get("converted_sha256"):
        raise WeightsError(f"{name}: {converted} does not match its recorded SHA-256")
    return record


def load_registered(name: str) -> Generator:
    from .nvidia_pickle import load_nvidia_pickle

    record = verify(name)
    converted = record.get("converted")
    if converted and Path(converted).exists():
        return load_safetensors_generator(converted)
    return load_nvidia_pickle(record["path"])


# ----------------------------------------------------------------------------------------------------------
# load_generator


def random_generator(resolution: int, channel_base: int | None = None, seed: int = 0) -> Generator:
    """A randomly initialised generator of NVIDIA's real size at `resolution` (see `networks.config_f`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(**config_f(resolution, channel_base))
    return G.eval().requires_grad_(False)


def load_generator(spec: str | os.PathLike, device: str | torch.device = "cpu") -> Generator:
    """Resolve `spec` (path, registered name, ``random:RES[:CHANNEL_BASE[:SEED]]``, or factory name) to an
    eval-mode Generator on `device` with gradients of its parameters switched off."""
    text = str(spec)
    if text.startswith("random:"):
        parts = text.split(":")[1:]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise WeightsError(f"bad spec {text!r}: use random:RES[:CHANNEL_BASE[:SEED]]") from None
        if not 1 <= len(numbers) <= 3:
            raise WeightsError(f"bad spec {text!r}: use random:RES[:CHANNEL_BASE[:SEED]]")
        res = numbers[0]
        if res < 4 or res & (res - 1):
            raise WeightsError(f"bad spec {text!r}: the resolution must be a power of two >= 4")
        if len(numbers) > 1 and numbers[1] < res:  # channels per block are channel_base // block resolution
            raise WeightsError(f"bad spec {text!r}: CHANNEL_BASE must be at least the resolution ({res})")
        G = random_generator(res, numbers[1] if len(numbers) > 1 else None, numbers[2] if len(numbers) > 2 else 0)
    elif text.split(":")[0] in GENERATOR_FACTORIES:
        G = GENERATOR_FACTORIES[text.split(":")[0]](text)
    elif text in PRETRAINED:
        G = load_registered(text)
    elif Path(text).exists() or Path(text).suffix:
        G = load_file(text)
    else:
        known = ", ".join([*PRETRAINED, *GENERATOR_FACTORIES, "random:RES"])
        raise WeightsError(f"{text!r} is neither a file nor a known generator ({known})")
    return G.to(device)


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """`stylerig weights convert`: any loadable generator spec -> our safetensors file."""
    G = load_generator(src)
    return save_generator(G, dst, {"stylerig.source": str(src)})
