"""DFR's light re-read through an affine map learned from per-image photometric fits (docs/rig.md, item 13).

DFR reads light 0.85 σ off, biased along the combinations of the 27 coefficients a face shows least (the ambient,
frontal and z² terms are nearly collinear over a face's normals), and RigNet, which learns through DFR, inherits
the bias mirrored: the illumination edit undershoots exactly the coefficient DFR over-reads on edited faces.
fit_photometric reads light closer (0.46 σ) but costs 3.3 s a face. A few hundred of its readings are enough to learn
an affine map from DFR's 27 light outputs to them, which folds into DFR's linear output layer: the same network,
every other block untouched, its light re-read (0.84 → 0.69 σ on plain faces, 0.95 → 0.79 σ on edited ones).
No truth is used, so it works on any generator whose faces a landmark detector finds.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import torch

from .networks import DFR

LIGHT_CALIBRATION_RIDGE = 1.0  # of the regression, in prior σ² (a few hundred faces: the choice barely matters)
LIGHT_CALIBRATION_CHUNK = 32  # faces per cached chunk of fits (and their edits)


def solve_light_calibration(layout, readings: torch.Tensor, fits: torch.Tensor, *,
                            ridge: float = LIGHT_CALIBRATION_RIDGE) -> torch.Tensor:
    """(28, 27) S with fits' light ≈ [readings' light, 1] @ S, both in prior standard deviations (ridge regression).

    Keyword args:
      layout: the parameter layout of both.
      readings: (N, D) DFR's readings.
      fits: (N, D) per-image fits of the same faces.
      ridge: weight of ‖S‖² (the constant's row included).
    """
    if readings.shape != fits.shape or readings.ndim != 2 or readings.shape[1] != layout.dim:
        raise ValueError(f"readings and fits must both be (N, {layout.dim}), got {tuple(readings.shape)} and "
                         f"{tuple(fits.shape)}")
    x, y = _light_sigma(layout, readings), _light_sigma(layout, fits)
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y).float()


def _light_sigma(layout, p: torch.Tensor) -> torch.Tensor:
    light = layout.slice("illumination")
    mean, std = (torch.as_tensor(a[light], dtype=torch.float64) for a in (layout.prior_mean, layout.prior_std))
    return (p[:, light].double().cpu() - mean) / std


def fold_light_calibration(dfr: DFR, solution: torch.Tensor) -> DFR:
    """A copy of dfr whose light outputs are the calibration of its own (solve_light_calibration), folded into its
    linear output layer (DFR predicts prior units, y = W h + b, p = mean + std · y); every other output is
    unchanged."""
    light = dfr.layout.slice("illumination")
    n = light.stop - light.start
    if tuple(solution.shape) != (n + 1, n):
        raise ValueError(f"a light calibration is ({n + 1}, {n}), got {tuple(solution.shape)}")
    out = copy.deepcopy(dfr)
    head = out.net[-1]
    assert isinstance(head, torch.nn.Linear)
    a = solution[:n].T.to(head.weight)  # (27, 27): new light = a @ old light + c
    c = solution[n].to(head.weight)
    with torch.no_grad():
        head.weight[light] = a @ head.weight[light]
        head.bias[light] = a @ head.bias[light] + c
    return out


def light_calibration_fits(rig, generator, ws: torch.Tensor, cache: Path, *, landmarks=None,
                           steps: int | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """DFR's readings and fit_photometric's of ws and of ws edited by the rig's illumination RigNet (each towards
    DFR's reading of the next latent, as RigNet's training draws targets; plain faces only when the rig has no
    illumination RigNet): {"readings": (M, D), "fits": (M, D)}, M = len(ws) or 2 len(ws). Hours of fits for a
    large set on a CPU, so they are cached chunk by chunk at `cache` and an interrupted run resumes
    (train.chunked_table).
    Keyword args:
      rig: gives DFR (the readings, the fits' start) and the illumination RigNet.
      generator: the rig's generator (fitting.ImageReader: images and landmarks).
      ws: (N, num_ws, w_dim) latents, e.g. the corpus's.
      cache: the fits' table file.
      landmarks: the corpus's landmark detector, callable(ws, images) (default: the generator's exact landmarks);
        faces it finds none in are left out.
      steps: fit steps (default fitting.PHOTOMETRIC_FIT_STEPS).
    """
    from .fitting import FIT_REG, ImageReader, fit_photometric
    from .train import _network_hash, chunked_table

    reader = ImageReader(rig, generator, steps=steps, landmarks=landmarks)
    editor = rig.rignets["illumination"] if "illumination" in rig.modes else None
    key = {"dfr": _network_hash(rig.dfr), "rignet": _network_hash(editor) if editor is not None else "none",
           "ws": _latents_hash(ws), "steps": str(reader.steps), "reg": str(FIT_REG)}

    with torch.no_grad():
        targets = rig.fit(ws).roll(1, 0)

    def chunk(k: int) -> dict[str, torch.Tensor]:
        rows = slice(k * LIGHT_CALIBRATION_CHUNK, (k + 1) * LIGHT_CALIBRATION_CHUNK)
        w = ws[rows]
        if editor is not None:
            with torch.no_grad():
                w = torch.cat([w, rig.edit(w, "illumination", targets[rows])])
        images, marks = reader.observe(w, every_face=False)
        found = torch.isfinite(marks).flatten(1).all(1)
        if not found.any():
            empty = torch.zeros(0, rig.layout.dim)
            return {"readings": empty, "fits": empty}
        with torch.no_grad():
            readings = rig.fit(w[found])
        fits = fit_photometric(reader.renderer, images[found], marks[found], readings, steps=reader.steps,
                               lr=reader.lr, reg=reader.reg)
        return {"readings": readings, "fits": fits}

    return chunked_table(cache, key, -(-len(ws) // LIGHT_CALIBRATION_CHUNK), chunk, desc="light-calibration fits",
                         progress=progress)


def _latents_hash(ws: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(ws.detach().cpu().float().numpy()).tobytes()).hexdigest()[:16]


def write_light_calibrated_dfr(rig, generator, corpus: str | Path, count: int, out: str | Path, *,
                               ridge: float = LIGHT_CALIBRATION_RIDGE, source: str | Path | None = None,
                               landmarks=None, progress: bool = True, write: bool = True) -> Path:
    """Calibrate the rig's DFR on the first `count` corpus latents (light_calibration_fits, their fits cached beside
    `out` as <out>.fits.safetensors) and write it to `out` (float32), recording how in its checkpoint.
    Keyword args:
      ridge: of solve_light_calibration.
      source: the DFR checkpoint the rig's DFR came from (its description and generator identity are kept).
      landmarks: of light_calibration_fits.
      write: False computes the fits only (the other ranks under torchrun: chunked_table shares the work).
    """
    from ..corpus import Corpus
    from .checkpoints import read_description, save_network

    corpus = Path(corpus)
    data = Corpus(corpus)
    if not 2 <= count <= len(data):
        raise ValueError(f"--count {count}: the calibration needs 2 to {len(data)} latents of the corpus {corpus}")
    ws = torch.from_numpy(data.read_rows(np.arange(count), names=("ws",))["ws"]).float()
    ws = ws.to(next(rig.dfr.parameters()).device)
    out = Path(out)
    table = light_calibration_fits(rig, generator, ws, out.with_name(out.name + ".fits.safetensors"),
                                   landmarks=landmarks, progress=progress)
    if len(table["fits"]) < 2:
        raise ValueError(f"the landmark detector found a face in {len(table['fits'])} of the images; the light "
                         "calibration needs at least 2")
    if not write:
        return out
    solution = solve_light_calibration(rig.layout, table["readings"], table["fits"], ridge=ridge)
    desc = read_description(source) if source is not None else {}
    how = {"from": str(source), "corpus": str(corpus), "count": count, "faces": len(table["fits"]), "ridge": ridge}
    save_network(fold_light_calibration(rig.dfr, solution), out, extra=dict(desc.get("extra") or {},
                                                                            light_calibration=how),
                 generator=desc.get("generator"))
    return out

