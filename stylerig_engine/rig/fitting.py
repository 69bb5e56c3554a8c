"""Analysis by synthesis: face parameters fitted to one generated image at a time, and closed-loop editing.

DFR reads parameters with one network for all faces; fitting them to each image on DFR's own loss (no network)
reads them far more exactly — on the synthetic world at 64², rotation 0.18° against DFR's 3.1° (docs/rig.md).
Closed-loop editing uses that reading as a sensor and RigNet as the actuator: edit, read what the edited image
shows, correct the command by the miss in the controlled blocks, repeat, and keep each face's best result.
It costs a fit per iteration (seconds per image on a CPU), so it suits final renders, not live preview.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ..corpus.landmarks import ExactLandmarks
from ..corpus.writer import resize_images, scale_landmarks
from ..render.face import FaceRenderer
from .editing import Rig, corrected_edit
from .losses import FaceLoss, LossWeights, region_model

FIT_REG = 1e-5  # a weak prior: with DFR's 1e-3 the prior outweighs the data near the optimum (docs/rig.md)


def fit_parameters(loss: FaceLoss, images: torch.Tensor | None, landmarks: torch.Tensor, start: torch.Tensor, *,
                   steps: int = 400, lr: float = 0.02, photometric: bool = True,
                   blocks: Sequence[str] | None = None, clamp: bool = False,
                   callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Parameters (B, D) that minimise loss's photometric + landmark terms + regulariser for each image.

    Keyword args:
      loss: FaceLoss at the images' resolution (its weights set the regulariser).
      images: (B, 3, S, S) generator images in [-1, 1] (None with photometric=False).
      landmarks: (B, 68, 2) their landmarks in pixels at S.
      start: (B, D) initial parameters (DFR's reading).
      steps: Adam steps; the learning rate follows a cosine from lr to 0.
      lr: peak learning rate in prior standard deviations (the fit runs in z = (p − μ) / σ).
      photometric: False fits the landmark term alone (no render).
      blocks: the blocks the fit may move (default all); the others stay at `start`.
      clamp: keep blendshape weights in the layout's range during the fit.
      callback: called as callback(step, params) after every step.
    """
    layout = loss.layout
    if start.ndim != 2 or start.shape != (len(landmarks), layout.dim):
        raise ValueError(f"start must be ({len(landmarks)}, {layout.dim}), got {tuple(start.shape)}")
    mean = torch.as_tensor(layout.prior_mean, dtype=start.dtype, device=start.device)
    std = torch.as_tensor(layout.prior_std, dtype=start.dtype, device=start.device)
    z0 = (start.detach() - mean) / std
    z = z0.clone().requires_grad_(True)
    free = None if blocks is None else torch.as_tensor(layout.mask(blocks), device=start.device)
    low, high = torch.full_like(mean, -torch.inf), torch.full_like(mean, torch.inf)
    if clamp and layout.expression_range is not None:
        low[layout.slice("expression")], high[layout.slice("expression")] = layout.expression_range

    def params() -> torch.Tensor:  # out of place, for autograd
        p = mean + std * (z if free is None else torch.where(free, z, z0))
        return p.clamp(low, high) if clamp else p

    optimizer = torch.optim.Adam([z], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    with torch.enable_grad():
        for step in range(1, steps + 1):
            p = params()
            total = (loss.weighted(loss.data_terms(p, images, landmarks, photometric=photometric))
                     + loss.regulariser(p)).mean()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            schedule.step()
            if callback is not None:
                callback(step, params().detach())
    return params().detach()


class ImageReader:
    """Reads the face parameters a latent's image shows: DFR's estimate refined by fit_photometric.

    Keyword args:
      rig: gives DFR (the start) and the parameter layout.
      generator: synthesis(ws) -> images; its landmarks come from `landmarks`.
      landmarks: callable(ws, images) -> (B, 68, 2) pixels at the generator's resolution (a corpus landmark
        detector); default: the generator's exact landmarks(ws), when it has them.
      size: resolution the fit renders at (images are downsampled to it; default min(resolution, 256)).
      steps, lr, reg: of fit_photometric (steps default PHOTOMETRIC_FIT_STEPS).
    """

    def __init__(self, rig: Rig, generator, *, landmarks: Callable | None = None, size: int | None = None,
                 steps: int | None = None, lr: float = 0.02, reg: float = FIT_REG):
        self.rig, self.generator, self.lr, self.reg = rig, generator, lr, reg
        self.steps = PHOTOMETRIC_FIT_STEPS if steps is None else steps
        self.resolution = int(generator.img_resolution)
        self.landmarks = landmarks if landmarks is not None else ExactLandmarks(generator)
        self.size = size or min(self.resolution, 256)
        device = next(rig.parameters()).device
        model = getattr(generator, "model", None)
        if model is None:
            from ..facemodel import DEFAULT_MODEL_NAME, load_model

            model = load_model(DEFAULT_MODEL_NAME)
        self.renderer = FaceRenderer(region_model(model), rig.layout, image_size=self.size, device=device)

    @property
    def loss(self) -> FaceLoss:
        """The fit's loss (fit_photometric's, at the fit's resolution), to measure what a reading explains."""
        return FaceLoss(self.renderer, LossWeights.with_reg(self.reg)).to(self.renderer.neutral.device)

    @torch.no_grad()
    def observe(self, ws: torch.Tensor, *, every_face: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, landmarks) of ws at the fit's resolution; every_face=False leaves NaN landmarks where the
        detector found no face (else that is an error)."""
        images = self.generator.synthesis(ws)
        landmarks = self.landmarks(ws, images).float()
        if every_face and not torch.isfinite(landmarks).all():
            raise ValueError("the landmark detector found no face in some images; closed-loop editing needs them")
        return resize_images(images, self.size), scale_landmarks(landmarks, self.resolution, self.size)

    def __call__(self, ws: torch.Tensor) -> torch.Tensor:
        images, landmarks = self.observe(ws)
        return fit_photometric(self.renderer, images, landmarks, self.rig.fit(ws), steps=self.steps, lr=self.lr,
                               reg=self.reg)


def closed_loop_edit(rig: Rig, reader: ImageReader, ws: torch.Tensor, mode: str, target: torch.Tensor, *,
                     iterations: int = 3, gain: float = 1.0) -> torch.Tensor:
    """ŵ whose image shows `target`'s blocks of `mode` more exactly than the rig's edit: closed_loop_edit_many
    of one mode."""
    return closed_loop_edit_many(rig, reader, ws, {mode: target}, iterations=iterations, gain=gain)


def closed_loop_edit_many(rig: Rig, reader: ImageReader, ws: torch.Tensor, targets: Mapping[str, torch.Tensor], *,
                          iterations: int = 3, gain: float = 1.0, rest: torch.Tensor | None = None,
                          should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """ŵ whose image shows each mode's target more exactly than the rig's composed edit (rig.edit_many).

    editing.corrected_edit with the rig's edit as the actuator and a per-image fit as the sensor. Keyword args:
      rig: its edit_many (RigNets and DFR's live corrections) is the actuator.
      reader: ImageReader, the sensor.
      ws: (B, num_ws, w_dim) latents to edit.
      targets: {mode: (B, D) or (D,) parameters}; each mode's RigNet reads only its own blocks.
      iterations: sensor readings (each one fit); iterations=0 is the rig's plain edit.
      gain: fraction of the measured miss added to each mode's command each iteration.
      rest: the rig's rest parameters, for the actuator's key corrections (Rig.edit_many).
      should_stop: asked before every reading; when it returns True, editing.LoopInterrupted is raised.
    """
    def actuate(w: torch.Tensor, commands: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return rig.edit_many(w, commands, rest=rest)

    return corrected_edit(actuate, reader, rig.layout, ws, targets, iterations=iterations, gain=gain,
                          should_stop=should_stop)


# ---- landmark fits: the geometry a face's landmarks show, cheap enough for a whole corpus ----------------------
GEOMETRY_BLOCKS = ("identity", "expression", "rotation", "translation")  # the blocks landmarks depend on
# Weights of the landmark fit: a weak identity prior and a weaker expression prior, so that a keyed-sized
# blendshape (a blink at 0.8) costs less than the landmark shift it explains (docs/rig.md, "Why DFR was blind").
LANDMARK_FIT_WEIGHTS = LossWeights(photometric=0.0, landmark=200.0, identity_reg=1e-4, albedo_reg=0.0,
                                   expression_reg=1e-6)


def fit_landmarks(renderer: FaceRenderer, landmarks: torch.Tensor, start: torch.Tensor, *, steps: int = 300,
                  lr: float = 0.05, weights: LossWeights = LANDMARK_FIT_WEIGHTS) -> torch.Tensor:
    """Parameters (B, D) whose GEOMETRY_BLOCKS are fitted to 68-point landmarks; other blocks stay at `start`.

    No image is rendered (landmarks are projected mesh vertices), so a fit of 1,024 faces takes seconds on one
    CPU core: a cheap per-image reading of pose and of the expressions landmarks show, used as DFR's distillation
    targets. Keyword args:
      renderer: FaceRenderer at the landmarks' resolution.
      landmarks: (B, 68, 2) pixels.
      start: (B, D) initial parameters (a trained DFR's reading fits far better than the prior mean).
      steps: Adam steps, learning rate on a cosine from lr to 0 (in prior standard deviations).
      weights: landmark weight and the identity/expression priors.
    """
    loss = FaceLoss(renderer, weights).to(start.device)
    return fit_parameters(loss, None, landmarks, start, steps=steps, lr=lr, photometric=False,
                          blocks=GEOMETRY_BLOCKS, clamp=True)


# ---- photometric fits: what the whole image shows, the reader's best self-supervised targets ----------------------
# One fit for both uses, the final renders' sensor (ImageReader) and distillation's targets: every block from DFR's
# reading against image and landmarks with the weak prior FIT_REG, 400 steps. Measured (docs/rig.md, item 12; 128
# held-out faces at 64²): rotation 0.25°, 18 of the 20 most varying blendshapes read at correlation 0.88–0.99 (smile
# 0.99, blink 0.96, pucker 0.95, browInnerUp 0.97, frown 0.88–0.91, browDown 0.89–0.90; eyeWide 0.49–0.50), where a
# landmark fit followed by 200 steps with the landmark fit's priors read pucker 0.91, browInnerUp 0.88, frown 0.75.
PHOTOMETRIC_FIT_STEPS = 400


def fit_photometric(renderer: FaceRenderer, images: torch.Tensor, landmarks: torch.Tensor, start: torch.Tensor, *,
                    steps: int = PHOTOMETRIC_FIT_STEPS, lr: float = 0.02, reg: float = FIT_REG) -> torch.Tensor:
    """Parameters (B, D) fitted to the images: every block on the photometric and landmark terms with a weak prior
    (fit_parameters). About 3.3 s a face at 64² on one CPU core (400 steps): a corpus of them is a GPU job.
    Keyword args:
      renderer: FaceRenderer of the model's face region (losses.region_model) at the images' resolution.
      images: (B, 3, S, S) generator images in [-1, 1].
      landmarks: (B, 68, 2) their landmarks in pixels at S.
      start: (B, D) initial parameters (a trained DFR's reading).
      steps, lr: of fit_parameters.
      reg: the regulariser weight (LossWeights.with_reg).
    """
    loss = FaceLoss(renderer, LossWeights.with_reg(reg)).to(start.device)
    return fit_parameters(loss, images, landmarks, start, steps=steps, lr=lr)
