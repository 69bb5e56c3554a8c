"""The engine facade: everything the engine server (and scripts) drive, behind one object.

    engine = Engine(generator, model, layout, fit=dfr, edit=rignets, device="cuda")
    h = engine.new_face(seed=3, psi=0.7)           # latent handle; z exactly as NVIDIA's scripts
    p = engine.fit([h])[0]                          # the face's own parameters, by the DFR
    p[layout.slice("rotation")] = (0.0, 0.4, 0.0)   # turn the head
    img = engine.render([h], {"pose": p[None]}, size=256)   # (1, 256, 256, 4) uint8, row 0 = top

Contracts of the parts it is built from (all already constructed, so it is testable with stand-ins):
  generator   mapping(z, psi=…) -> ws (B, num_ws, w_dim); synthesis(ws, noise_mode='const') -> (B, 3, R, R)
              in [-1, 1]; attributes num_ws, w_dim, z_dim, img_resolution, w_avg.
  model       a MorphableModel (geometry for the Blender rig).
  layout      the ParamLayout of the parameters p the DFR predicts and RigNets take.
  fit         fit(ws (B, num_ws, w_dim)) -> p (B, D): the DFR. Optional.
  edit        edit(ws, targets: {mode: p (B, D)}) -> ws_hat: the RigNets, applied pose, then expression, then
              illumination. Optional; may name the modes it serves in an attribute `modes`, and may take
              `rest=` (B, D), the parameters the client's rig shows unkeyed (else the engine does not pass it).

The engine is not thread-safe for torch work: the server calls it from a single device worker thread.
The latent handle store alone is locked, so handles can be uploaded/released from any thread.
"""

from __future__ import annotations

import io
import logging
import math
import secrets
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .params import COMPOSITION_ORDER, CONTROL_MODES, ParamLayout, layout_for_model
from .pyspec import import_spec, takes_keyword

# Image formats, row orders and colour spaces of rendered images (the wire protocol's and the server's too).
FORMATS = ("rgba8", "float16", "jpeg")
ORIGINS = ("top", "bottom")
COLORSPACES = ("srgb", "linear")
MAX_SIZE = 4096
log = logging.getLogger("stylerig.engine")


class EngineError(ValueError):
    """A request the engine cannot serve; `code` is the wire protocol's error code."""

    code = "bad_request"


class NotAvailable(EngineError):
    code = "not_available"


class UnknownHandle(EngineError):
    code = "unknown_handle"


class WrongGenerator(EngineError):
    """A rig trained for another generator than the engine's (refused at start)."""


def load_rig(directory, device: str | torch.device = "cpu") -> tuple[Callable, Callable]:
    """(fit, edit) from a trained DFR + RigNet directory: the hook `stylerig serve --rignet DIR` calls.
    `edit.generator` is the identity of the generator the rig was trained for (None when not recorded),
    `edit.shape` its W+ shape (num_ws, w_dim).

    "shipped" names the rig trained on the synthetic world that ships with the engine."""
    from .rig import SHIPPED_RIG, CheckpointError
    from .rig import load_rig as load_rig_networks

    path = SHIPPED_RIG if str(directory) == "shipped" else directory
    try:
        rig = load_rig_networks(path, device)
    except (CheckpointError, OSError) as e:
        raise NotAvailable(f"cannot load DFR/RigNet from {str(directory)!r}: {e}") from e

    def fit(ws):
        return rig.fit(ws)

    def edit(ws, targets, rest=None):
        return rig.edit_many(ws, targets, rest=rest)

    fit.layout = edit.layout = rig.layout  # type: ignore[attr-defined]
    fit.rig = edit.rig = rig  # type: ignore[attr-defined]  # final quality (rig/final_quality.py) drives it directly
    edit.modes = rig.modes  # type: ignore[attr-defined]
    edit.generator = rig.generator  # type: ignore[attr-defined]
    edit.shape = (rig.dfr.num_ws, rig.dfr.w_dim)  # type: ignore[attr-defined]
    edit.source = str(path)  # type: ignore[attr-defined]
    return fit, edit


def seed_to_z(seed: int, z_dim: int) -> np.ndarray:
    """(1, z_dim) float64 exactly as NVIDIA's scripts: np.random.RandomState(seed).randn(1, z_dim)."""
    return np.random.RandomState(seed).randn(1, z_dim)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3|4) uint8 -> JPEG bytes (alpha dropped)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[..., :3])).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(0).pow(2.4))


class Engine:
    def __init__(
        self,
        generator,
        model,
        layout: ParamLayout | None = None,
        *,
        fit: Callable | None = None,
        edit: Callable | None = None,
        device: str | torch.device = "cpu",
        max_batch: int = 8,
        max_handles: int = 4096,
        name: str | None = None,
        identity: Mapping[str, Any] | None = None,
        rig_generator: Mapping[str, Any] | None = None,
    ):
        self.device = torch.device(device)
        if isinstance(generator, torch.nn.Module):
            generator = generator.to(self.device).eval()
        self.generator = generator
        self.model = model
        self.layout = layout if layout is not None else layout_for_model(model)
        self.fit_fn = fit
        self.edit_fn = edit
        self.max_batch = max(1, int(max_batch))
        self.max_handles = int(max_handles)
        self.name = name or type(generator).__name__
        self.num_ws = int(generator.num_ws)
        self.w_dim = int(generator.w_dim)
        self.z_dim = int(generator.z_dim)
        self.resolution = int(generator.img_resolution)
        self.identity = dict(identity) if identity else None  # rig.checkpoints.generator_identity
        self.rig_generator = dict(rig_generator) if rig_generator else None  # what the rig was trained for
        self._latents: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._mapping_takes_psi = takes_keyword(generator.mapping, "psi")
        self._synthesis_takes_noise = takes_keyword(generator.synthesis, "noise_mode")
        self._edit_takes_rest = edit is not None and takes_keyword(edit, "rest")
        self.final_quality: Any = None  # rig.final_quality.FinalQuality: built on first use, or set by the caller

    # ---- description ---------------------------------------------------------------------------------
    @property
    def edit_modes(self) -> tuple[str, ...]:
        if self.edit_fn is None:
            return ()
        modes = getattr(self.edit_fn, "modes", None)
        return tuple(m for m in COMPOSITION_ORDER if m in (modes if modes is not None else CONTROL_MODES))

    def info(self) -> dict:
        return {
            "generator": {
                "name": self.name,
                "resolution": self.resolution,
                "num_ws": self.num_ws,
                "w_dim": self.w_dim,
                "z_dim": self.z_dim,
                "weights_sha256": (self.identity or {}).get("weights_sha256"),
            },
            # the generator the loaded DFR/RigNets were trained for (None: no rig, or not recorded)
            "rig_generator": self.rig_generator,
            "model": {
                "name": getattr(self.model, "name", None),
                "num_vertices": int(self.model.num_vertices),
                "num_identity": int(self.model.num_identity),
                "num_expression": int(self.model.num_expression),
            },
            "layout": self.layout.describe(),
            "fit": self.fit_fn is not None,
            "edit_modes": list(self.edit_modes),
            "formats": list(FORMATS),
            "device": str(self.device),
            "max_batch": self.max_batch,
            "max_size": MAX_SIZE,
            "image": "rows top to bottom (origin 'top'; 'bottom' on request), RGBA; "
            "rgba8 and jpeg are sRGB-encoded "
            "as the generator outputs, float16 is sRGB-encoded or linear on request, alpha = 1",
        }

    def geometry(
        self, identity_modes: int | None = None, half: bool = False
    ) -> tuple[dict, dict[str, np.ndarray]]:
        """What the Blender add-on needs to build the rig: (metadata, arrays).

        arrays: vertices (V,3) neutral, centimetres; polygon_start (P+1,) offsets into polygon_vertices (quads
        kept); polygon_vertices; uvs (U,2); polygon_uvs (parallel to polygon_vertices); triangles (T,3);
        expression_basis (K_exp,V,3) offsets at weight 1; identity_basis (N,V,3) the first N identity modes
        (coefficient 1 = one standard deviation); albedo_mean (V,3) linear RGB; landmarks (68,) vertex ids."""
        m = self.model
        n_id = self.layout.size("identity") if identity_modes is None else int(identity_modes)
        n_id = max(0, min(n_id, m.num_identity))
        fdt = np.float16 if half else np.float32
        arrays = {
            "vertices": np.asarray(m.neutral, np.float32),
            "polygon_start": np.asarray(m.polygon_start, np.int32),
            "polygon_vertices": np.asarray(m.polygon_vertices, np.int32),
            "uvs": np.asarray(m.uvs, np.float32),
            "polygon_uvs": np.asarray(m.polygon_uvs, np.int32),
            "triangles": np.asarray(m.triangles, np.int32),
            "expression_basis": np.asarray(m.expression_basis, fdt),
            "identity_basis": np.asarray(m.identity_basis[:n_id], fdt),
            "albedo_mean": np.asarray(m.albedo_mean, np.float32),
            "landmarks": np.asarray(m.landmarks, np.int32),
        }
        meta = {
            "name": getattr(m, "name", None),
            "expression_names": list(m.expression_names),
            "expression_prior": m.expression_prior,
            "identity_modes": n_id,
            "regions": sorted(getattr(m, "regions", {}) or {}),
            "layout": self.layout.describe(),
            "conventions": {
                "units": "centimetres",
                "frame": "head-centred: +X subject's left, +Y up, +Z out of the face (towards the camera)",
                "polygons": "counter-clockwise seen from outside; "
                "polygon i = polygon_vertices[polygon_start[i]:"
                "polygon_start[i+1]]",
                "expression": "vertices + sum_k w_k expression_basis[k] (+ sum_j c_j identity_basis[j])",
                "colours": "albedo_mean is linear RGB in [0, 1]",
            },
            "notice": getattr(m, "notice", ""),
        }
        return meta, arrays

    # ---- latent handles ------------------------------------------------------------------------------
    def _store(self, ws: torch.Tensor) -> str:
        handle = secrets.token_hex(8)
        with self._lock:
            self._latents[handle] = ws
            while len(self._latents) > self.max_handles:
                self._latents.popitem(last=False)
        return handle

    def latent(self, handle: str) -> torch.Tensor:
        """(num_ws, w_dim) on the engine's device."""
        with self._lock:
            ws = self._latents.get(handle) if isinstance(handle, str) else None
            if ws is None:
                raise UnknownHandle(
                    f"unknown latent handle {handle!r} (never created, released, or evicted; "
                    "handles do not survive an engine restart)"
                )
            self._latents.move_to_end(handle)
            return ws

    def latents(self, handles: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.latent(h) for h in handles])

    def release(self, handles: Sequence[str]) -> int:
        with self._lock:
            return sum(self._latents.pop(h, None) is not None for h in handles if isinstance(h, str))

    @property
    def num_handles(self) -> int:
        return len(self._latents)

    def check_latent(self, ws: Any) -> torch.Tensor:
        """A client's latent -> (num_ws, w_dim) float32 tensor: W (w_dim,) is broadcast to every layer."""
        a = np.asarray(ws)
        if a.dtype.kind not in "fiu":
            raise EngineError(f"latent must be numeric, got dtype {a.dtype}")
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.shape == (self.w_dim,):
            a = np.broadcast_to(a, (self.num_ws, self.w_dim))
        if a.shape != (self.num_ws, self.w_dim):
            raise EngineError(
                f"latent must be W+ ({self.num_ws}, {self.w_dim}) or W ({self.w_dim},), "
                f"got shape {tuple(a.shape)}"
            )
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise EngineError("latent contains NaN or inf")
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def upload(self, ws: Any) -> str:
        return self._store(self.check_latent(ws))

    @torch.no_grad()
    def map_seeds(self, seeds: Sequence[int], psi: float = 0.7) -> torch.Tensor:
        """(B, num_ws, w_dim) for integer seeds; z = RandomState(seed).randn(1, z_dim) as NVIDIA's scripts."""
        for s in seeds:
            if not (isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 0 <= s < 2**32):
                raise EngineError(f"seed must be an integer in [0, 2**32), got {s!r}")
        if not (isinstance(psi, (int, float)) and math.isfinite(psi)):
            raise EngineError(f"psi must be a finite number, got {psi!r}")
        z = np.concatenate([seed_to_z(int(s), self.z_dim) for s in seeds])
        z = torch.from_numpy(z).to(self.device, torch.float32)
        out = []
        for i in range(0, len(z), self.max_batch):
            zi = z[i : i + self.max_batch]
            ws = (
                self.generator.mapping(zi, psi=psi)
                if self._mapping_takes_psi
                else self.generator.mapping(zi, None, truncation_psi=psi)
            )
            if ws.ndim == 2:
                ws = ws[:, None].expand(-1, self.num_ws, -1)
            out.append(ws.float())
        return torch.cat(out).contiguous()

    def new_faces(self, seeds: Sequence[int], psi: float = 0.7) -> list[str]:
        return [self._store(w) for w in self.map_seeds(seeds, psi)]

    def new_face(self, seed: int, psi: float = 0.7) -> str:
        return self.new_faces([seed], psi)[0]

    # ---- DFR -----------------------------------------------------------------------------------------
    def _fit_fn(self) -> Callable:
        if self.fit_fn is None:
            raise NotAvailable(
                "no DFR loaded: start the engine with --rignet DIR to fit parameters to a face"
            )
        return self.fit_fn

    @torch.no_grad()
    def fit_latents(self, ws: torch.Tensor) -> np.ndarray:
        fit_fn = self._fit_fn()
        out = []
        for i in range(0, len(ws), self.max_batch):
            p = fit_fn(ws[i : i + self.max_batch])
            out.append(torch.as_tensor(p).detach().float().cpu().numpy())
        p = np.concatenate(out)
        if p.shape != (len(ws), self.layout.dim):
            raise EngineError(f"DFR returned shape {p.shape}, expected ({len(ws)}, {self.layout.dim})")
        return p

    def fit(self, handles: Sequence[str] | str) -> np.ndarray:
        """(B, D) parameters of the faces (or (D,) for one handle given as a string)."""
        self._fit_fn()  # raises NotAvailable before complaining about handles
        if isinstance(handles, str):
            return self.fit_latents(self.latents([handles]))[0]
        return self.fit_latents(self.latents(handles))

    # ---- rendering -----------------------------------------------------------------------------------
    def _check_params(self, what: str, v: Any, batch: int) -> torch.Tensor:
        """(D,) or (B, D) numbers -> (B, D) float32 tensor on the device; EngineError naming `what`."""
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        if a.dtype.kind not in "fiu":
            raise EngineError(f"{what} must be numeric, got dtype {a.dtype}")
        if a.shape == (self.layout.dim,):
            a = np.broadcast_to(a, (batch, self.layout.dim))
        if a.shape != (batch, self.layout.dim):
            raise EngineError(
                f"{what} must have shape ({self.layout.dim},) or ({batch}, {self.layout.dim}), got {tuple(a.shape)}"
            )
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise EngineError(f"{what} contains NaN or inf")
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def check_targets(self, targets: Mapping[str, Any] | None, batch: int) -> dict[str, torch.Tensor]:
        """{mode: (D,) or (B, D)} -> {mode: (B, D) float32 tensor}, in edit order. Empty when no targets."""
        if not targets:
            return {}
        unknown = [m for m in targets if m not in CONTROL_MODES]
        if unknown:
            raise EngineError(f"unknown control mode(s) {unknown}; modes are {list(CONTROL_MODES)}")
        if self.edit_fn is None:
            raise NotAvailable(
                "no RigNet loaded: start the engine with --rignet DIR to render rig parameters"
            )
        missing = [m for m in targets if m not in self.edit_modes]
        if missing:
            raise NotAvailable(f"no RigNet for mode(s) {missing}; loaded: {list(self.edit_modes)}")
        return {m: self._check_params(f"target {m!r}", targets[m], batch) for m in COMPOSITION_ORDER if m in targets}

    def check_rest(self, rest: Any, batch: int) -> torch.Tensor | None:
        """The rig's rest parameters, (D,) or (B, D) -> (B, D) float32 tensor; None stays None (the edit then
        finds keys against DFR's reading of the face)."""
        return None if rest is None else self._check_params("rest", rest, batch)

    @torch.no_grad()
    def synthesize(self, ws: torch.Tensor, targets: Mapping[str, torch.Tensor] | None = None,
                   rest: torch.Tensor | None = None) -> torch.Tensor:
        """ws (B, num_ws, w_dim), checked targets and rest -> images (B, 3, R, R) in [-1, 1] (one generator call
        per max_batch)."""
        out = []
        for i in range(0, len(ws), self.max_batch):
            w = ws[i : i + self.max_batch]
            if targets:
                if self.edit_fn is None:  # check_targets refuses targets without RigNets
                    raise NotAvailable("no RigNet loaded")
                chunk = {m: t[i : i + self.max_batch] for m, t in targets.items()}
                if rest is not None and self._edit_takes_rest:
                    w = self.edit_fn(w, chunk, rest=rest[i : i + self.max_batch])
                else:
                    w = self.edit_fn(w, chunk)
            if self._synthesis_takes_noise:
                out.append(self.generator.synthesis(w, noise_mode="const"))
            else:
                out.append(self.generator.synthesis(w))
        return out[0] if len(out) == 1 else torch.cat(out)

    @torch.no_grad()
    def to_images(
        self,
        x: torch.Tensor,
        size: int | None = None,
        fmt: str = "rgba8",
        *,
        origin: str = "top",
        colorspace: str = "srgb",
    ) -> np.ndarray:
        """(B, 3, R, R) in [-1, 1] -> numpy (B, S, S, 4) uint8 (rgba8), float16 (float16) or (B, S, S, 3)
        uint8
        (jpeg, to be encoded). Resizing and conversion happen on the torch side (the device)."""
        fmt, size = self.check_format(fmt, size, origin, colorspace)
        x = x.float()
        if size != x.shape[-1]:
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1]
            )
        if origin == "bottom":
            x = x.flip(-2)
        b = x.shape[0]
        if fmt == "float16":
            y = x.add(1).mul_(0.5).clamp_(0, 1)
            if colorspace == "linear":
                y = _srgb_to_linear(y)
            y = y.to(torch.float16)
            out = torch.empty((b, size, size, 4), dtype=torch.float16, device=x.device)
            out[..., 3] = 1
        else:
            y = x.add(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
            out = torch.empty((b, size, size, 4 if fmt == "rgba8" else 3), dtype=torch.uint8, device=x.device)
            if fmt == "rgba8":
                out[..., 3] = 255
        for c in range(3):  # channel by channel: much faster than permute().contiguous() on CPU
            out[..., c] = y[:, c]
        return out.cpu().numpy()

    def check_format(
        self, fmt: str, size: int | None, origin: str = "top", colorspace: str = "srgb"
    ) -> tuple[str, int]:
        if fmt not in FORMATS:
            raise EngineError(f"unknown image format {fmt!r}; formats are {list(FORMATS)}")
        size = self.resolution if size is None else size
        if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool) and 1 <= size <= MAX_SIZE):
            raise EngineError(f"size must be an integer in [1, {MAX_SIZE}], got {size!r}")
        if origin not in ORIGINS:
            raise EngineError(f"origin must be one of {list(ORIGINS)}, got {origin!r}")
        if colorspace not in COLORSPACES:
            raise EngineError(f"colorspace must be one of {list(COLORSPACES)}, got {colorspace!r}")
        return fmt, int(size)

    def render(
        self,
        latents: Sequence[str] | torch.Tensor | np.ndarray,
        targets: Mapping[str, Any] | None = None,
        *,
        size: int | None = None,
        fmt: str = "rgba8",
        quality: int = 90,
        origin: str = "top",
        colorspace: str = "srgb",
        rest: Any = None,
    ) -> np.ndarray | list[bytes]:
        """Handles or latents (B, num_ws, w_dim), targets {mode: (D,) or (B, D)} -> images: (B, S, S, 4) uint8
        (rgba8), (B, S, S, 4) float16 (float16) or a list of JPEG bytes (jpeg). rest: (D,) or (B, D), the
        parameters the client's rig shows unkeyed (what it was matched to); the expression keys are found
        against them (default: DFR's reading of the face)."""
        self.check_format(fmt, size, origin, colorspace)
        if isinstance(latents, (torch.Tensor, np.ndarray)):
            ws = torch.stack([self.check_latent(w) for w in latents]) if len(latents) else None
        else:
            ws = self.latents(list(latents)) if len(latents) else None
        if ws is None:
            raise EngineError("render needs at least one latent")
        checked = self.check_targets(targets, len(ws))
        x = self.synthesize(ws, checked, self.check_rest(rest, len(ws)))
        images = self.to_images(x, size, fmt, origin=origin, colorspace=colorspace)
        if fmt == "jpeg":
            return [encode_jpeg(im, quality) for im in images]
        return images


# ---- building an engine from command-line specs ---------------------------------------------------------
def load_generator(spec: str, device: str = "cpu"):
    """`synthetic[:RES]` (the synthetic face world, default 256), `py:MODULE:FUNCTION` (a factory, called with
    device=…), or anything stylegan2.load_generator accepts (`random:256`, a weights name, a path)."""
    if spec.startswith("py:"):
        try:
            factory = import_spec(spec)
        except ValueError as e:
            raise EngineError(f"generator {e}") from None
        return factory(device=device) if takes_keyword(factory, "device") else factory()
    if spec == "synthetic" or spec.startswith("synthetic:"):
        try:
            from .synthetic import SyntheticGenerator
        except ImportError as e:
            raise NotAvailable(f"the synthetic generator is not available in this build ({e})") from e
        res = spec.partition(":")[2]
        if res and not res.isdigit():
            raise EngineError(f"generator spec {spec!r} must be synthetic or synthetic:RESOLUTION")
        return SyntheticGenerator(resolution=int(res or 256), device=device)
    try:
        from .stylegan2 import load_generator as sg_load
    except ImportError as e:
        raise NotAvailable(
            f"cannot load generator {spec!r}: stylerig_engine.stylegan2.load_generator is not "
            f"available in this build ({e})"
        ) from e
    try:
        return sg_load(spec, device=device) if takes_keyword(sg_load, "device") else sg_load(spec)
    except (OSError, ValueError, RuntimeError) as e:  # WeightsError, missing files, bad formats
        raise EngineError(f"cannot load generator {spec!r}: {e}") from e


def build_engine(
    generator_spec: str,
    *,
    rignet: str | None = None,
    model: str | None = None,
    device: str = "cpu",
    oracle_fit: bool = False,
    max_batch: int = 8,
    allow_generator_mismatch: bool = False,
) -> Engine:
    """Engine for `stylerig serve`. The face model and layout come from the generator when it carries them
    (the synthetic world does: attributes `model`, `layout`), else from --model or the default model.

    A rig (`rignet`) is refused unless it was trained for this generator (rig.checkpoints.check_generator):
    a different W+ shape always, different weights unless `allow_generator_mismatch`. A rig that does not
    record its generator is served with a warning (logged)."""
    from .rig.checkpoints import GeneratorMismatch, check_generator, generator_identity

    generator = load_generator(generator_spec, device)
    face_model = getattr(generator, "model", None)
    layout = getattr(generator, "layout", None)
    if model is not None:
        from .facemodel import load_model

        face_model, layout = load_model(model), None
    if face_model is None:
        from .facemodel import load_default_model

        face_model = load_default_model()
    if layout is None:
        layout = layout_for_model(face_model)
    identity = generator_identity(generator, generator_spec)
    fit = edit = None
    rig_generator = None
    if rignet is not None:
        fit, edit = load_rig(rignet, device)
        rig_shape = edit.shape  # type: ignore[attr-defined]
        rig_generator = edit.generator  # type: ignore[attr-defined]
        if rig_shape != (identity["num_ws"], identity["w_dim"]):
            raise WrongGenerator(
                f"the rig {rignet!r} works on W+ {rig_shape[0]} x {rig_shape[1]} latents; generator "
                f"{generator_spec!r} has W+ {identity['num_ws']} x {identity['w_dim']}: a rig only serves the "
                "generator it was trained for"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # logged below instead, once
            try:
                messages = check_generator(
                    rig_generator, identity, where=f"the rig {rignet!r}", allow_mismatch=allow_generator_mismatch
                )
            except GeneratorMismatch as e:
                raise WrongGenerator(str(e)) from None
        for message in messages:
            log.warning("%s", message)
    elif oracle_fit:
        true_params = getattr(generator, "true_params", None)
        if true_params is None:
            raise EngineError(
                "--oracle-fit needs a generator with exact ground truth (true_params), e.g. synthetic"
            )
        fit = true_params
    return Engine(
        generator,
        face_model,
        layout,
        fit=fit,
        edit=edit,
        device=device,
        max_batch=max_batch,
        name=generator_spec,
        identity=identity,
        rig_generator=rig_generator,
    )
