"""Edited latents for DFR: what a rig's RigNets make of corpus latents, read by landmark fits.

A RigNet learns only through DFR, so it is drawn to latents where DFR misreads: edited latents lie off the
corpus DFR learned from. Measured on the synthetic world (docs/rig.md, item 9): the student DFR read rotation
2.0° off on corpus-like latents but 2.7° off on the pose RigNet's edits, and the pose RigNet missed its target
by 3.6° while DFR saw it 2.8° off. Teaching the student these latents too (their landmark fits as targets, the
same self-supervised targets as the corpus's) takes that to 1.75°, and it shows the RigNet's real miss, which
a fine-tuning through it then closes. This is DAgger (Ross et al., AISTATS 2011) for the reader: train on the
distribution the learner visits.

Each edited latent is a corpus latent w edited by one of the rig's RigNets towards a target built as RigNet is
trained: half the time the face's own reading with a few of the mode's controls keyed (key_edits), else with
the mode's blocks from another face's reading (the paper's edits). Its landmarks come from the corpus's own
generator and detector, so this works for real generators as for the synthetic world.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..corpus import Corpus, detect_landmarks, make_detector, resolve_generator
from ..corpus.writer import describe_generator
from ..params import CONTROL_MODES
from ..render.face import FaceRenderer
from .checkpoints import CheckpointError, GeneratorMismatch
from .editing import load_rig
from .key_edits import KeyEditSampler
from .networks import DFR, RigNet

KEYED_SHARE = 0.5  # of the edited latents, those edited towards keyed targets (the rest: another face's blocks)
READING_POOL = 4096  # corpus readings the key ranges are drawn from


def edited_rows(corpus: Corpus, count: int, seed: int) -> np.ndarray:
    """The corpus samples (with a face) that the `count` edited latents start from: a seeded draw, in order."""
    faces = np.flatnonzero(corpus.face_found())
    if not len(faces):
        raise ValueError(f"{corpus.root}: no sample has landmarks; edited latents are read by landmark fits")
    rng = np.random.default_rng([seed, 0xED17])
    return faces[rng.permutation(len(faces))[:count]] if count <= len(faces) else rng.choice(faces, count)


class LatentEditor:
    """Edits latents with a rig's RigNets as RigNet training does (one random mode per latent).

    Keyword args:
      rig: directory of a trained rig (its RigNets are used; its DFR is not).
      teacher: the DFR whose readings the targets start from (the readings the fits start from, too).
      pool: (N, num_ws, w_dim) corpus latents whose readings give the other faces and the key ranges.
    """

    def __init__(self, rig: str | os.PathLike, teacher: DFR, pool: torch.Tensor):
        loaded = load_rig(rig, device=pool.device)
        self.rignets: list[RigNet] = [net for net in loaded.rignets.values() if isinstance(net, RigNet)]
        if not self.rignets:
            raise CheckpointError(f"{rig}: no RigNet checkpoints (rignet-<mode>.safetensors) to edit with")
        for net in self.rignets:
            if (net.num_ws, net.w_dim) != (teacher.num_ws, teacher.w_dim) or net.layout.names != teacher.layout.names:
                raise CheckpointError(f"{rig}: RigNet {net.mode} does not match the DFR's latent or parameter layout")
        self.teacher, self.layout = teacher, teacher.layout
        with torch.no_grad():
            self.pool = teacher(pool)
        self.keys = {net.mode: KeyEditSampler(self.layout, net.mode, self.pool) for net in self.rignets}

    @torch.no_grad()
    def __call__(self, ws: torch.Tensor, seed: int) -> torch.Tensor:
        """ŵ (B, num_ws, w_dim) for latents ws; the same seed gives the same edits."""
        with torch.random.fork_rng(devices=[ws.device] if ws.device.type == "cuda" else []):
            torch.manual_seed(seed)
            reading = self.teacher(ws)
            b = len(ws)
            which = torch.randint(len(self.rignets), (b,), device=ws.device)
            other = self.pool[torch.randint(len(self.pool), (b,), device=ws.device)]
            keyed = torch.rand(b, device=ws.device) < KEYED_SHARE
            out = ws.clone()
            for k, net in enumerate(self.rignets):
                rows = which == k
                if not rows.any():
                    continue
                target = reading[rows].clone()
                for block in CONTROL_MODES[net.mode]:
                    cols = self.layout.slice(block)
                    target[:, cols] = other[rows][:, cols]
                key_targets = self.keys[net.mode](reading[rows])
                target = torch.where(keyed[rows, None], key_targets, target)
                out[rows] = net(ws[rows], target)
        return out


def edited_fit_chunk(corpus: Corpus, rows: np.ndarray, editor: LatentEditor, gen, detector,
                     renderer: FaceRenderer, seed: int) -> dict[str, torch.Tensor]:
    """Edited latents of these corpus rows and their landmark fits: {"ws": (n, num_ws, w_dim), "targets": (n, D)},
    without the latents whose images the detector finds no face in."""
    from .fitting import fit_landmarks

    device = next(editor.teacher.parameters()).device
    ws = torch.from_numpy(corpus.read_rows(rows, names=("ws",))["ws"]).float().to(device)
    edited = editor(ws, seed)
    landmarks = detect_landmarks(gen, edited, size=corpus.resolution, detector=detector)
    found = torch.isfinite(landmarks).flatten(1).all(1).to(device)
    edited, landmarks = edited[found], landmarks.to(device)[found]
    with torch.no_grad():
        start = editor.teacher(edited)
    return {"ws": edited.cpu().contiguous(), "targets": fit_landmarks(renderer, landmarks, start).cpu().contiguous()}


def corpus_generator(corpus: Corpus, device: torch.device | str):
    """The corpus's generator and landmark detector, checked against the identity its manifest records."""
    spec, detector_name = corpus.config["generator"], corpus.config.get("landmarks", "exact")
    gen = resolve_generator(spec, device)
    if isinstance(gen, torch.nn.Module):
        gen = gen.to(device).eval()
    recorded = corpus.generator.get("weights_sha256")
    running = describe_generator(gen).get("weights_sha256")
    if recorded and running and recorded != running:
        raise GeneratorMismatch(f"{corpus.root}: generator {spec!r} resolves to other weights than the corpus was made "
                         f"with ({running[:12]} != {recorded[:12]}); edited latents need the corpus's generator")
    return gen, make_detector(detector_name, gen, device)


def reading_pool(corpus: Corpus, seed: int, device) -> torch.Tensor:
    """A seeded sample of corpus latents (READING_POOL at most) for LatentEditor's pool."""
    rng = np.random.default_rng([seed, 0x9001])
    rows = np.sort(rng.permutation(len(corpus))[:READING_POOL])
    return torch.from_numpy(corpus.read_rows(rows, names=("ws",))["ws"]).float().to(device)

