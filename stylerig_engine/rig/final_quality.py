"""Final quality: the engine's batch renders and fits with per-image fitting in the loop (rig/fitting.py).

    fq = final_quality(engine)                           # built on first use from the engine's rig
    p = fit_final(engine, handles)                       # "Match rig to face": DFR refined by a per-image fit
    ws_hat = edit_final(engine, ws, targets)             # closed-loop edit of every keyed mode at once
    x = render_final(engine, ws, targets)                # (B, 3, R, R): edit_final, then the generator

A plain render is the rig's live edit (RigNets and DFR's corrections: milliseconds); a final-quality render
reads what the edited image shows with a per-image fit and corrects the command (closed_loop_edit_many: one loop
for all keyed modes, one fit per reading), so it is seconds per frame on a CPU (docs/benchmarks.md) and meant for
batch renders, not the live preview. It needs the engine's Rig (DFR + RigNets, `--rignet DIR`) and the generator's
landmarks (the synthetic world has exact ones).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..corpus import CorpusConfigError
from ..engine import Engine, EngineError, NotAvailable
from .editing import LoopInterrupted, Rig
from .fitting import ImageReader, closed_loop_edit_many

# Sensor readings per final-quality frame: the closed-loop results in docs/rig.md flatten after 3–4.
FINAL_ITERATIONS = 3


class FinalQualityCancelled(EngineError):
    """A final-quality render was stopped between two of its readings (cancel, disconnect, shutdown)."""

    code = "cancelled"


@dataclass
class FinalQuality:
    """What the engine needs for final quality: the rig (actuator and DFR), the image reader (sensor).

    Keyword args:
      rig: the engine's Rig.
      reader: ImageReader on the engine's generator (its steps set the cost of each reading).
      iterations: readings per edited frame (closed_loop_edit_many).
    """

    rig: Rig
    reader: ImageReader
    iterations: int = FINAL_ITERATIONS

    def __post_init__(self) -> None:
        if not (isinstance(self.iterations, int) and self.iterations >= 1):
            raise ValueError(f"final quality needs at least one reading per frame, got iterations={self.iterations!r}")


def engine_rig(engine: Engine) -> Rig | None:
    """The Rig behind the engine's fit/edit hooks (engine.load_rig attaches it), if any."""
    for hook in (engine.edit_fn, engine.fit_fn):
        rig = getattr(hook, "rig", None)
        if isinstance(rig, Rig):
            return rig
    return None


def final_quality(engine: Engine) -> FinalQuality:
    """The engine's FinalQuality, built on first use (an ImageReader on its generator and rig) and kept on
    engine.final_quality; NotAvailable, naming what is missing, when the engine cannot do it."""
    fq = engine.final_quality
    if fq is not None:
        return fq
    rig = engine_rig(engine)
    if rig is None:
        raise NotAvailable("final quality needs a DFR and RigNets: start the engine with --rignet DIR")
    try:
        reader = ImageReader(rig, engine.generator)
    except CorpusConfigError as e:
        raise NotAvailable(f"final quality needs the faces' landmarks: {e}") from None
    engine.final_quality = fq = FinalQuality(rig, reader)
    return fq


def fit_final(engine: Engine, handles: Sequence[str]) -> np.ndarray:
    """(B, D) parameters of the faces: the DFR's reading refined by a per-image fit of each face's image, with
    blendshape weights clamped to the layout's range (the fit is unconstrained and may read a neutral weight as
    slightly negative, which a rig's 0–1 slider cannot show).

    At most engine.max_batch faces (one fit): a fit holds the engine's only device worker for seconds, and the
    live previews of every client wait behind it."""
    fq = final_quality(engine)
    if len(handles) > engine.max_batch:
        raise EngineError(f"a final-quality fit takes at most {engine.max_batch} faces per request (seconds each), "
                          f"got {len(handles)}")
    return engine.layout.clamp(_read(fq, engine.latents(list(handles)))).float().cpu().numpy()


@torch.no_grad()
def edit_final(engine: Engine, ws: torch.Tensor, targets: Mapping[str, torch.Tensor], *,
               rest: torch.Tensor | None = None, should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """ŵ (B, num_ws, w_dim): ws edited by closed-loop editing towards targets {mode: (B, D)} (as
    engine.check_targets returns them; at least one); rest (B, D): the rig's rest parameters (engine.check_rest).
    FinalQualityCancelled when should_stop() says so between two readings."""
    fq = final_quality(engine)
    missing = [m for m in targets if m not in fq.rig.modes]
    if missing:
        raise NotAvailable(f"no RigNet for mode(s) {missing}; loaded: {fq.rig.modes}")
    edited = []
    for i in range(0, len(ws), engine.max_batch):
        chunk = {m: t[i : i + engine.max_batch] for m, t in targets.items()}
        chunk_rest = None if rest is None else rest[i : i + engine.max_batch]
        try:
            edited.append(closed_loop_edit_many(fq.rig, fq.reader, ws[i : i + engine.max_batch], chunk,
                                                iterations=fq.iterations, rest=chunk_rest, should_stop=should_stop))
        except LoopInterrupted as e:
            raise FinalQualityCancelled(f"final-quality render {e}") from None
        except ValueError as e:  # the reader found no face (no landmarks) in an edited image
            raise EngineError(f"final quality: {e}") from None
    return torch.cat(edited)


def render_final(engine: Engine, ws: torch.Tensor, targets: Mapping[str, torch.Tensor], *,
                 rest: torch.Tensor | None = None, should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Images (B, 3, R, R) in [-1, 1] of edit_final's ŵ; without targets, the faces as generated."""
    if not targets:
        return engine.synthesize(ws, None)
    return engine.synthesize(edit_final(engine, ws, targets, rest=rest, should_stop=should_stop), None)


def _read(fq: FinalQuality, ws: torch.Tensor) -> torch.Tensor:
    try:
        return fq.reader(ws)
    except ValueError as e:
        raise EngineError(f"final quality: {e}") from None
