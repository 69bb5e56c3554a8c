"""Training of DFR and RigNets on a corpus: deterministic, resumable, data-parallel through torchrun.

A run directory holds:
  config.json                the TrainConfig of the run
  <name>.safetensors         the network (name = "dfr" or "rignet-<mode>"), rewritten atomically
  <name>.state.safetensors   optimizer state, step and RNG state for --resume
  log.jsonl                  one line of losses per logged step
Data-parallel training (torchrun, gloo on CPU / nccl on CUDA) splits every global batch across ranks and
averages gradients, so N processes follow the same trajectory as one process with the same global batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from tqdm import tqdm

from ..corpus import Corpus
from ..corpus import batch_indices as corpus_batch_indices
from ..facemodel import DEFAULT_MODEL_NAME, load_model
from ..fileio import atomic_write
from ..params import PAPER_MODES, layout_for_model
from ..render.face import FaceRenderer
from .checkpoints import load_network, save_network
from .key_edits import KeyEditSampler
from .losses import FaceLoss, LossWeights, RigNetLossWeights, dfr_loss, key_edit_loss, region_model, rignet_loss
from .networks import DFR, RigNet

# The batch every shipped recipe's learning rate was tuned at: TrainConfig.lr is the rate at this batch, and
# lr_scaling scales it to the run's batch.
LR_REFERENCE_BATCH = 32
# TrainConfig.lr_scaling: the factor on the peak learning rate as a function of batch / LR_REFERENCE_BATCH.
LR_SCALINGS = {"none": lambda ratio: 1.0, "sqrt": math.sqrt, "linear": lambda ratio: ratio}
# TrainConfig.precision: the dtype the networks' forward runs in (under torch.autocast when not float32).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    """One training run. Keyword args:
      net: "dfr" or "rignet".
      corpus: corpus directory (stylerig corpus).
      out: run directory.
      mode: control mode of a RigNet (pose, expression, illumination, identity, albedo).
      layers: W+ layers the RigNet may change (default per mode, networks.DEFAULT_MODE_LAYERS_14).
      dfr: DFR checkpoint a RigNet is trained against (frozen).
      steps: optimisation steps.
      batch: global batch size (split across ranks).
      lr: Adam learning rate (the peak, for the cosine schedule) at a batch of LR_REFERENCE_BATCH (32); lr_scaling
        scales it to `batch`.
      lr_scaling: how the peak learning rate follows the batch: "none" (lr as given), "sqrt" (lr × √(batch / 32),
        the square-root rule for Adam, Malladi et al., NeurIPS 2022) or "linear" (lr × batch / 32).
      lr_schedule: "cosine" (linear warm-up over the first `warmup` of the steps, then cosine decay to 0;
        a function of the step, so resumed runs follow it exactly) or "constant".
      warmup: fraction of the steps spent warming up (cosine schedule).
      seed: makes the run deterministic (initialisation and data order).
      hidden: hidden width of the network.
      layer_code: DFR's per-layer code width (0: the paper's MLP on the flat W+; see networks.DFR).
      model: morphable model name or .npz path (default: the default ICT model).
      init: a checkpoint of the same kind and shape whose weights (and input statistics) start the run
        (fine-tuning); None starts from a fresh initialisation.
      distill: DFR only: weight of the landmark-fit distillation term. Every corpus sample's landmarks are fitted
        once (fitting.fit_landmarks, started from the run's initial DFR, cached in <out>/dfr.fit-targets.safetensors)
        and DFR's DISTILL_BLOCKS are pulled towards that fit, in prior standard deviations: a per-image,
        well-conditioned reading of pose and expression that the self-supervised loss alone does not teach an
        amortised network (docs/rig.md). 0 turns it off. Best from a trained DFR (init) or with a teacher.
      teacher: DFR only, with distill: the trained DFR checkpoint whose readings start the landmark fits and give
        the targets of the blocks landmarks do not fit (default: the run's own initial network), so that a fresh,
        wider DFR can learn from a trained one.
      fits: DFR only, with distill: the per-image fits distilled, "landmark" (fitting.fit_landmarks: seconds for a
        corpus, reads pose and the expressions landmarks show) or "photometric" (fitting.fit_photometric: every
        block, the expressions landmarks miss too, ~3.3 s a face on a CPU core: a GPU job for a corpus; cached chunk
        by chunk in <out>/dfr.photometric-fit-targets.safetensors, so an interrupted run resumes).
      render: DFR only: False trains on the distillation targets alone, every block (the fits' geometry, the
        starting reading's identity, albedo and light), with no render: a regression that costs a small fraction
        of a self-supervised step, so a wider network can be trained on many more samples (needs distill > 0).
      key_edits: RigNet only: the fraction of each batch edited towards the face's own reading with a few of the
        mode's entries keyed (key_edits.KeyEditSampler, values in the range DFR reads on the corpus), as an animator
        keys a smile or a turn, instead of towards another face's F(v); those edits have no image and train through
        the parameter terms and L_consist (losses.key_edit_loss). 0 is the paper's training.
      generator: the identity of the generator the corpus came from (name, resolution, W+ shape, weights hash);
        written into finished configs by `stylerig rig stamp` and `train all`, not used by training itself.
      loss: LossWeights fields.
      rignet_loss: RigNetLossWeights fields.
      checkpoint_every: steps between checkpoints.
      log_every: steps between log lines.
      tensorboard: also write TensorBoard logs to <out>/tb (needs the tensorboard extra).
      device: "cpu", "cuda" or "cuda:N" (under torchrun, cuda uses the local rank's GPU).
      precision: "fp32", or "bf16": the networks' forward (DFR and RigNet, also the frozen DFR of a RigNet run)
        under torch.autocast in bfloat16, their outputs cast back to float32; the renderer and the losses stay
        float32 (depth tests, barycentrics and small image differences need it). Weights, optimizer state and
        checkpoints stay float32; bfloat16 needs no loss scaling.
      shared_code: RigNet runs: each layer's decoder also sees all the mode's layers' codes (networks.RigNet).
      edited_by: render-free DFR runs (render=False): a trained rig directory whose RigNets edit corpus latents;
        the student also learns these edited latents, with their landmark fits as targets (edited_latents), so
        that it reads where RigNets edit to. None: the corpus alone.
      edited_count: how many edited latents (their fits are cached in <out>/dfr.edited-targets.safetensors).
      edited_share: the share of every batch drawn from the edited latents.
      compile: torch.compile the networks for the training steps (fewer kernel launches; the first step pays the
        compilation, tens of seconds). Checkpoints are the same as without it.
    """

    net: str
    corpus: str
    out: str
    mode: str | None = None
    layers: list[int] | None = None
    dfr: str | None = None
    steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    warmup: float = 0.02
    seed: int = 0
    hidden: int = 256
    layer_code: int = 64
    model: str | None = None
    init: str | None = None
    distill: float = 0.0
    teacher: str | None = None
    fits: str = "landmark"
    render: bool = True
    key_edits: float = 0.0
    shared_code: bool = False
    edited_by: str | None = None
    edited_count: int = 0
    edited_share: float = 0.0
    generator: dict | None = None  # the generator's identity, stamped by checkpoints.stamp_generator
    loss: dict = field(default_factory=lambda: asdict(LossWeights()))
    rignet_loss: dict = field(default_factory=lambda: asdict(RigNetLossWeights()))
    checkpoint_every: int = 200
    log_every: int = 10
    tensorboard: bool = False
    device: str = "cpu"
    lr_scaling: str = "none"
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self):
        if self.net not in ("dfr", "rignet"):
            raise ValueError(f"net must be 'dfr' or 'rignet', got {self.net!r}")
        if self.net == "rignet" and (self.mode is None or self.dfr is None):
            raise ValueError("a RigNet run needs --mode and --dfr (a trained DFR checkpoint)")
        if self.steps < 1 or self.batch < 2 or self.lr <= 0:
            raise ValueError("steps must be >= 1, batch >= 2 and lr > 0")
        if not self.distill >= 0 or (self.distill and self.net != "dfr"):
            raise ValueError(f"distill must be >= 0 and is for DFR runs only, got {self.distill} for {self.net}")
        if self.fits not in FITS or (self.fits != "landmark" and not self.distill):
            raise ValueError(f"fits must be one of {FITS} ('photometric' with distill > 0), got {self.fits!r}")
        if (self.teacher or not self.render) and (self.net != "dfr" or not self.distill):
            raise ValueError("teacher and render=False are for DFR runs with distill > 0 (distillation)")
        if self.shared_code and self.net != "rignet":
            raise ValueError("shared_code is for RigNet runs")
        if self.edited_by is not None and (self.render or not 0 < self.edited_share < 1 or self.edited_count < 1):
            raise ValueError("edited_by is for render-free DFR runs (render=False) and needs edited_count >= 1 and "
                             f"edited_share in (0, 1), got {self.edited_count} and {self.edited_share}")
        if self.edited_by is None and (self.edited_count or self.edited_share):
            raise ValueError("edited_count and edited_share need edited_by (the rig whose RigNets edit)")
        if not 0 <= self.key_edits < 1 or (self.key_edits and self.net != "rignet"):
            raise ValueError(f"key_edits must be in [0, 1) and is for RigNet runs only, got {self.key_edits} for "
                             f"{self.net}")
        if self.key_edits and not self.rignet_loss.get("parameter_edit", 1.0):
            raise ValueError("key_edits train through the parameter terms: they need rignet_loss parameter_edit > 0")
        if self.lr_schedule not in ("cosine", "constant") or not 0 <= self.warmup < 1:
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant' and warmup in [0, 1), got "
                             f"{self.lr_schedule!r}, {self.warmup}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {self.lr_scaling!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def peak_lr(self) -> float:
        """lr scaled from LR_REFERENCE_BATCH to the run's batch by lr_scaling."""
        return self.lr * LR_SCALINGS[self.lr_scaling](self.batch / LR_REFERENCE_BATCH)

    def learning_rate(self, step: int) -> float:
        """The learning rate of 0-based step `step`."""
        peak = self.peak_lr
        if self.lr_schedule == "constant":
            return peak
        warm = max(1, round(self.warmup * self.steps))
        if step < warm:
            return peak * (step + 1) / warm
        return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, self.steps - warm)))

    @property
    def name(self) -> str:
        return "dfr" if self.net == "dfr" else f"rignet-{self.mode}"

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        return cls(**json.loads(Path(path).read_text()))

    def save(self, path: str | os.PathLike) -> None:
        with atomic_write(path, "w") as f:
            json.dump(asdict(self), f, indent=1)


# ---- distributed helpers -------------------------------------------------------------------------------
def _dist():
    d = torch.distributed
    return d if d.is_available() and d.is_initialized() else None


def init_distributed(device: str) -> tuple[int, int, str]:
    """Initialise torch.distributed when launched by torchrun; returns (rank, world_size, device)."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and _dist() is None:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    d = _dist()
    rank, world = (d.get_rank(), d.get_world_size()) if d else (0, 1)
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return rank, world, device


def _average_gradients(params) -> None:
    d = _dist()
    if d is None:
        return
    world = d.get_world_size()
    for p in params:
        if p.grad is not None:
            d.all_reduce(p.grad)
            p.grad /= world


# ---- data -------------------------------------------------------------------------------------------------
def batch_indices(corpus: Corpus, seed: int, step: int, batch: int) -> np.ndarray:
    """The global batch of `step`: consecutive slices of the seeded per-epoch order (last partial batch dropped),
    without the samples whose detector found no face (the same order as before when every face was found)."""
    return corpus_batch_indices(corpus, seed, step, batch)


def load_batch(corpus: Corpus, indices: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ws, images, landmarks, _ = corpus.batch(indices, device)
    return ws, images, landmarks


def latent_statistics(corpus: Corpus, count: int = 1000) -> torch.Tensor:
    """W+ of the corpus's first `count` samples, for the networks' input normalisation."""
    return torch.from_numpy(corpus.read_rows(np.arange(min(count, len(corpus))), names=("ws",))["ws"]).float()


def _initialise_from(net: DFR | RigNet, path: str) -> None:
    """Copy the weights of checkpoint `path` into net, which must have the same kind, mode and shapes."""
    source = load_network(path, "cpu")
    if type(source) is not type(net) or getattr(source, "mode", None) != getattr(net, "mode", None):
        raise ValueError(f"--init {path}: a {type(source).__name__} checkpoint cannot start a {net.__class__.__name__}"
                         + (f" for mode {net.mode!r}" if isinstance(net, RigNet) else ""))
    theirs, ours = source.state_dict(), net.state_dict()
    # a paper RigNet may start one with a shared code: its context layer starts at zero (networks.RigNet)
    grown = {k for k in ours if k.startswith("context.") and k not in theirs}
    mismatch = [k for k in ours if k not in grown and (k not in theirs or theirs[k].shape != ours[k].shape)]
    mismatch += [k for k in theirs if k not in ours]
    if mismatch:
        raise ValueError(f"--init {path}: its shapes differ from this run's network ({', '.join(mismatch[:4])})")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in theirs.items()}, strict=not grown)


# ---- landmark-fit distillation -------------------------------------------------------------------------
DISTILL_BLOCKS = ("expression", "rotation", "translation")  # what a face's 68 landmarks pin down per image
FITS = ("landmark", "photometric")  # the per-image fits DFR can distil (TrainConfig.fits)


def _network_hash(net: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes()
                                   for v in net.state_dict().values())).hexdigest()[:16]


def chunked_table(path: Path, key: dict[str, str], chunks: int, compute, *, desc: str,
                  progress: bool = True) -> dict[str, torch.Tensor]:
    """A table computed chunk by chunk and cached at `path` (atomic; reused while its metadata equals `key`):
    compute(k) -> {name: (n_k, ...) tensor} for chunk k in range(chunks); the chunks' rows are concatenated in
    order. Every finished chunk is kept in `<path>.chunks/` until the table is written, so an interrupted run
    resumes at the chunks it had not finished (photometric fits take hours). Under torchrun every rank computes
    every world-th chunk and rank 0 assembles the table; call on every rank."""

    def cached(file: Path) -> dict[str, torch.Tensor] | None:
        if file.is_file():
            with safe_open(str(file), "pt") as f:
                if f.metadata() == key:
                    return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        return None

    table = cached(path)
    if table is not None:
        return table
    d = _dist()
    rank, world = (d.get_rank(), d.get_world_size()) if d else (0, 1)
    parts = path.with_name(f"{path.name}.chunks")
    parts.mkdir(parents=True, exist_ok=True)
    for k in tqdm(range(rank, chunks, world), desc=desc, unit="chunk", disable=not progress or rank != 0):
        if cached(parts / f"{k}.safetensors") is None:
            chunk = {name: value.cpu().contiguous() for name, value in compute(k).items()}
            with atomic_write(parts / f"{k}.safetensors") as f:
                f.write(save(chunk, metadata=key))
    if d is not None and world > 1:
        d.barrier()
    if rank == 0:
        done = [c for c in (cached(parts / f"{k}.safetensors") for k in range(chunks)) if c is not None]
        if len(done) != chunks:
            raise RuntimeError(f"{parts}: a chunk another rank computed cannot be read")
        table = {name: torch.cat([c[name] for c in done]) for name in done[0]}
        with atomic_write(path) as f:
            f.write(save(table, metadata=key))
        shutil.rmtree(parts)  # (with any chunk a bigger corpus left there)
    if d is not None and world > 1:
        d.barrier()
    if table is None:
        table = cached(path)
    if table is None:
        raise RuntimeError(f"{path}: the table rank 0 wrote cannot be read")
    return table


FIT_TABLES = {"landmark": "dfr.fit-targets.safetensors", "photometric": "dfr.photometric-fit-targets.safetensors"}


def fit_targets(corpus: Corpus, dfr: DFR, renderer: FaceRenderer, out: Path, fits: str = "landmark", *,
                progress: bool = True) -> torch.Tensor:
    """(N, D) per-image fits of every corpus sample, started from dfr's reading, cached in `out` (FIT_TABLES),
    chunk by chunk (chunked_table): "landmark" (fitting.fit_landmarks, no image read: seconds for a corpus) or
    "photometric" (fitting.fit_photometric: hours on a CPU, so a stopped run resumes at its unfinished chunks).
    Under torchrun every rank fits every world-th chunk; call on every rank."""
    from . import fitting

    if not corpus.has_landmarks:
        raise ValueError(f"{corpus.root}: the corpus has no landmarks; distillation fits them")
    key = {"corpus": str(Path(corpus.root).resolve()), "count": str(len(corpus)), "dfr": _network_hash(dfr)}
    if fits == "photometric":  # (landmark tables keep the key they always had)
        key.update(fits="photometric", steps=str(fitting.PHOTOMETRIC_FIT_STEPS), reg=str(fitting.FIT_REG))
    device = next(dfr.parameters()).device
    chunk = 1024 if fits == "landmark" else 256

    def fit(k: int) -> dict[str, torch.Tensor]:
        rows = np.arange(k * chunk, min((k + 1) * chunk, len(corpus)))
        if fits == "landmark":  # landmarks alone: the images are not read
            read = corpus.read_rows(rows, names=("ws", "landmarks"))
            ws, landmarks = (torch.from_numpy(read[n]).float().to(device) for n in ("ws", "landmarks"))
        else:
            ws, images, landmarks, _ = corpus.batch(rows, device)
        with torch.no_grad():
            reading = dfr(ws)
        if fits == "landmark":
            return {"targets": fitting.fit_landmarks(renderer, landmarks, reading)}
        return {"targets": fitting.fit_photometric(renderer, images, landmarks, reading,
                                                   steps=fitting.PHOTOMETRIC_FIT_STEPS)}

    return chunked_table(out / FIT_TABLES[fits], key, -(-len(corpus) // chunk), fit, desc=f"{fits} fits",
                         progress=progress)["targets"]


def edited_fit_targets(corpus: Corpus, dfr: DFR, renderer: FaceRenderer, rig: str, count: int, seed: int,
                       path: Path, *, chunk: int = 1024, progress: bool = True) -> dict[str, torch.Tensor]:
    """{"ws": (M, num_ws, w_dim), "targets": (M, D)}: `count` corpus latents edited by the RigNets of `rig` and
    their landmark fits started from dfr's readings (edited_latents); M <= count (latents whose images show no
    face are left out). Cached at `path` (atomic); call on every rank under torchrun."""
    from .edited_latents import LatentEditor, corpus_generator, edited_fit_chunk, edited_rows, reading_pool

    device = next(dfr.parameters()).device
    rig_hash = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(rig).glob("rignet-*.safetensors"))))
    key = {"corpus": str(Path(corpus.root).resolve()), "count": str(count), "dfr": _network_hash(dfr),
           "rig": rig_hash.hexdigest()[:16], "seed": str(seed)}
    state: dict = {}

    def fit(k: int) -> dict[str, torch.Tensor]:
        if not state:  # rows, generator and editor are only set up when the table is not cached
            state["rows"] = edited_rows(corpus, count, seed)
            state["gen"], state["detector"] = corpus_generator(corpus, device)
            state["editor"] = LatentEditor(rig, dfr, reading_pool(corpus, seed, device))
        return edited_fit_chunk(corpus, state["rows"][k * chunk:(k + 1) * chunk], state["editor"], state["gen"],
                                state["detector"], renderer, seed * 1_000_003 + k)

    return chunked_table(path, key, -(-count // chunk), fit, desc="edited latents", progress=progress)


def _student_batch(corpus: Corpus, targets: torch.Tensor, edited: dict[str, torch.Tensor], cfg: TrainConfig,
                   step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of a render-free student's batch: (ws, targets), round(edited_share · batch) of the rows
    from the edited latents (drawn from the seed and step, so a resumed run draws the same), the rest from the
    corpus."""
    device = targets.device
    n_edited = round(cfg.edited_share * cfg.batch) if edited else 0
    idx = batch_indices(corpus, cfg.seed, step, cfg.batch)[:cfg.batch - n_edited]
    ws = torch.from_numpy(corpus.read_rows(idx, names=("ws",))["ws"]).float().to(device)
    wanted = targets[torch.as_tensor(idx, device=device)]
    if n_edited:
        rng = np.random.default_rng([cfg.seed, step, 0xED17])
        pick = torch.as_tensor(rng.integers(len(edited["ws"]), size=n_edited), device=device)
        ws, wanted = torch.cat([ws, edited["ws"][pick]]), torch.cat([wanted, edited["targets"][pick]])
    return ws[rank::world], wanted[rank::world]


def distill_term(layout, params: torch.Tensor, targets: torch.Tensor,
                 blocks: tuple[str, ...] = DISTILL_BLOCKS) -> torch.Tensor:
    """Squared distance of params' `blocks` from the targets in prior standard deviations: the mean over blocks of
    each block's mean, so that rotation's 3 entries count as much as expression's 53."""
    sq = (layout.normalise(params) - layout.normalise(targets)).square()
    return sum(sq[:, layout.slice(b)].mean() for b in blocks) / len(blocks)


# ---- RigNet's step ---------------------------------------------------------------------------------------
def _rignet_step(loss: FaceLoss, dfr: DFR | _Autocast, rignet: RigNet | _Autocast, keys: KeyEditSampler | None,
                 cfg: TrainConfig, ws: torch.Tensor, images: torch.Tensor, landmarks: torch.Tensor
                 ) -> tuple[torch.Tensor, dict]:
    """RigNet's loss on one batch: the first round(key_edits · B) latents are edited towards keyed targets
    (key_edit_loss), each of the others towards the next one's reading (rignet_loss); weighted by their counts."""
    weights = RigNetLossWeights(**cfg.rignet_loss)
    n = min(round(cfg.key_edits * len(ws)), len(ws) - 1) if keys is not None else 0  # L_rec needs a paper row
    paper_w, paper_images, paper_landmarks = ws[n:], images[n:], landmarks[n:]
    total, stats = rignet_loss(loss, dfr, rignet, w=paper_w, v=paper_w.roll(1, 0), image_w=paper_images,
                               image_v=paper_images.roll(1, 0), landmarks_w=paper_landmarks,
                               landmarks_v=paper_landmarks.roll(1, 0), weights=weights)
    if n:
        assert keys is not None
        with torch.no_grad():
            start = dfr(ws[:n])
        keyed, key_stats = key_edit_loss(loss, dfr, rignet, w=ws[:n], target=keys(start), image_w=images[:n],
                                         landmarks_w=landmarks[:n], weights=weights, p_w=start)
        total = (total * (len(ws) - n) + keyed * n) / len(ws)
        stats = {**stats, "loss": total.item(), **{f"key_{k}": v for k, v in key_stats.items() if k != "loss"}}
    return total, stats


# ---- the run --------------------------------------------------------------------------------------------
class _Autocast:
    """A network whose forward runs under torch.autocast in `dtype` and returns float32 (TrainConfig.precision),
    so that what follows it (renderer, losses) stays float32. Its other attributes are the network's, so that
    rignet_loss takes it in the network's place."""

    def __init__(self, net: torch.nn.Module, device_type: str, dtype: torch.dtype):
        self.net, self.device_type, self.dtype = net, device_type, dtype

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.net(*args)
        return out.float()

    def __getattr__(self, name: str):
        return getattr(self.net, name)


Network = TypeVar("Network", bound=torch.nn.Module)


def _in_precision(net: Network, precision: str, device: str) -> Network | _Autocast:
    """net itself for fp32, else net under autocast (_Autocast)."""
    dtype = PRECISIONS[precision]
    if dtype == torch.float32:
        return net
    device_type = torch.device(device).type
    if device_type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision {precision}: this GPU does not support bfloat16; use fp32")
    return _Autocast(net, device_type, dtype)


def _save_state(path: Path, optimizer: torch.optim.Optimizer, step: int) -> None:
    tensors = {"step": torch.tensor(step), "rng": torch.get_rng_state()}
    for i, state in optimizer.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().cpu().clone()
    with atomic_write(path) as f:
        f.write(save(tensors))


def _load_state(path: Path, optimizer: torch.optim.Optimizer) -> int:
    tensors = load_file(str(path))
    sd = optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    optimizer.load_state_dict(sd)
    torch.set_rng_state(tensors["rng"])
    return int(tensors["step"])


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train one network; returns the checkpoint path. Call under torchrun for data parallelism."""
    rank, world, device = init_distributed(cfg.device)
    if cfg.batch % world:
        raise ValueError(f"batch {cfg.batch} is not divisible by the {world} processes")
    out = Path(cfg.out)
    ckpt, state_path, config_path = out / f"{cfg.name}.safetensors", out / f"{cfg.name}.state.safetensors", \
        out / f"{cfg.name}.config.json"
    if resume and config_path.exists():
        old = TrainConfig.load(config_path)
        bookkeeping = dict(steps=0, checkpoint_every=0, log_every=0, tensorboard=False,  # may change on resume
                           generator=None)
        if {**asdict(old), **bookkeeping} != {**asdict(cfg), **bookkeeping}:
            raise ValueError(f"{config_path}: --resume with a different configuration; use a new --out")
        cfg.generator = cfg.generator or old.generator  # keep a stamp
    elif not resume and ckpt.exists():
        raise FileExistsError(f"{ckpt} exists; pass --resume to continue it or choose another --out")
    torch.manual_seed(cfg.seed)
    corpus = Corpus(cfg.corpus)
    model = load_model(cfg.model or DEFAULT_MODEL_NAME)
    layout = layout_for_model(model)
    generator_info = corpus.generator
    num_ws, w_dim = int(generator_info["num_ws"]), int(generator_info["w_dim"])
    renderer = FaceRenderer(region_model(model), layout, image_size=corpus.resolution, device=device)
    loss = FaceLoss(renderer, LossWeights(**cfg.loss)).to(device)
    if cfg.net == "dfr":
        net: DFR | RigNet = DFR(layout, num_ws=num_ws, w_dim=w_dim, hidden=cfg.hidden, layer_code=cfg.layer_code)
        dfr = None
    else:
        assert cfg.mode is not None and cfg.dfr is not None  # TrainConfig.__post_init__ refuses a RigNet without them
        net = RigNet(cfg.mode, layout, num_ws=num_ws, w_dim=w_dim, hidden=cfg.hidden,
                     layers=tuple(cfg.layers) if cfg.layers else None, shared_code=cfg.shared_code)
        dfr = load_network(cfg.dfr, device)
        if not isinstance(dfr, DFR):
            raise ValueError(f"{cfg.dfr} is not a DFR checkpoint")
        dfr.requires_grad_(False)
    statistics = latent_statistics(corpus)
    net.normaliser.set_statistics(statistics)
    keys = None
    if cfg.key_edits:
        assert dfr is not None and cfg.mode is not None  # key_edits are for RigNet runs (TrainConfig)
        with torch.no_grad():
            keys = KeyEditSampler(layout, cfg.mode, dfr(statistics.to(device)))
    if cfg.init:
        _initialise_from(net, cfg.init)
    net = net.to(device)
    targets = None
    edited: dict[str, torch.Tensor] = {}
    if cfg.distill:  # from the teacher or the run's initial network, before a resumed state replaces it
        assert isinstance(net, DFR)  # TrainConfig.__post_init__ allows distill for DFR runs only
        teacher = load_network(cfg.teacher, device) if cfg.teacher else net
        if not isinstance(teacher, DFR):
            raise ValueError(f"--teacher {cfg.teacher} is not a DFR checkpoint")
        targets = fit_targets(corpus, teacher, renderer, out, cfg.fits, progress=progress).to(device)
        if cfg.edited_by is not None:
            edited = edited_fit_targets(corpus, teacher, renderer, cfg.edited_by, cfg.edited_count, cfg.seed,
                                        out / "dfr.edited-targets.safetensors", progress=progress)
            if not len(edited["ws"]):
                raise ValueError(f"{cfg.edited_by}: no edited latent shows a face; nothing to learn from them")
            edited = {name: value.to(device) for name, value in edited.items()}
        del teacher
    # one fused kernel for the whole update on CUDA; elsewhere Adam's default (foreach on CUDA, per-tensor on CPU)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=True if torch.device(device).type == "cuda"
                                 else None)
    step = 0
    if resume and ckpt.exists() and state_path.exists():
        net.load_state_dict(load_network(ckpt, device).state_dict())
        step = _load_state(state_path, optimizer)
    if cfg.compile:  # in place (nn.Module.compile): the state_dict keys, and so the checkpoints, stay the same
        for network in (net, dfr):
            if network is not None:
                network.compile()
    forward = _in_precision(net, cfg.precision, device)
    dfr_forward = _in_precision(dfr, cfg.precision, device) if isinstance(dfr, DFR) else None
    if rank == 0:
        cfg.save(config_path)
    writer = None
    if cfg.tensorboard and rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RuntimeError(
                "TensorBoard logs need the tensorboard extra: pip install 'stylerig[tensorboard]'") from e
        writer = SummaryWriter(str(out / "tb"))
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, disable=not progress or rank != 0, unit="step")
    log = open(out / f"{cfg.name}.log.jsonl", "a") if rank == 0 else None  # noqa: SIM115 (closed below)
    t0, samples = time.perf_counter(), 0
    every_block = tuple(name for name, _ in layout.sizes)  # what a render-free student learns
    try:
        while step < cfg.steps:
            if not cfg.render:  # distillation alone, a regression on the target table: no images to read
                assert targets is not None  # render=False needs distill (TrainConfig)
                ws, wanted = _student_batch(corpus, targets, edited, cfg, step, rank, world)
                distilled = distill_term(layout, forward(ws), wanted, every_block)
                total = cfg.distill * distilled
                stats = {"loss": total.item(), "distill": distilled.item()}
            elif dfr_forward is None:
                idx = batch_indices(corpus, cfg.seed, step, cfg.batch)[rank::world]
                ws, images, landmarks = load_batch(corpus, idx, device)
                params = forward(ws)
                total, stats = dfr_loss(loss, params, images, landmarks)
                if targets is not None:
                    distilled = distill_term(layout, params, targets[torch.as_tensor(idx, device=device)])
                    total = total + cfg.distill * distilled
                    stats["distill"] = distilled.item()
            else:
                assert not isinstance(forward, DFR)  # a RigNet run (set up above)
                idx = batch_indices(corpus, cfg.seed, step, cfg.batch)[rank::world]
                ws, images, landmarks = load_batch(corpus, idx, device)
                total, stats = _rignet_step(loss, dfr_forward, forward, keys, cfg, ws, images, landmarks)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            _average_gradients(net.parameters())
            for group in optimizer.param_groups:
                group["lr"] = cfg.learning_rate(step)
            optimizer.step()
            step += 1
            samples += cfg.batch
            if log is not None:  # rank 0
                rate = samples / max(time.perf_counter() - t0, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", samples_s=f"{rate:.1f}")
                if step % cfg.log_every == 0 or step == cfg.steps:
                    log.write(json.dumps({"step": step, **stats, "lr": cfg.learning_rate(step - 1),
                                          "samples_per_s": rate}) + "\n")
                    log.flush()
                    if writer:
                        for k, v in stats.items():
                            writer.add_scalar(f"{cfg.name}/{k}", v, step)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    save_network(net, ckpt, extra=dict(step=step, corpus=str(cfg.corpus)))
                    _save_state(state_path, optimizer, step)
    finally:
        bar.close()
        if log:
            log.close()
        if writer:
            writer.close()
    d = _dist()
    if d is not None:
        d.barrier()
    return ckpt


MODES_TO_TRAIN = PAPER_MODES
