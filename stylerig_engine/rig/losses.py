"""Losses of DFR and RigNet (formulas in docs/rig.md).

Images from a generator are sRGB in [-1, 1]; renders are linear RGB, so renders are encoded with
`to_generator_space` before they are compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..params import CONTROL_MODES, ParamLayout
from ..render.face import FaceRenderer
from ..render.shading import linear_to_srgb


def to_generator_space(linear: torch.Tensor) -> torch.Tensor:
    """Linear RGB render -> the generator's image space (sRGB in [-1, 1])."""
    return linear_to_srgb(linear) * 2 - 1


def region_model(model, region: str = "face_skin"):
    """The model cut down to one region's triangles and the vertices they use (plus the landmarks).

    The photometric losses compare that region only, so the rest of the head need not be posed, shaded or
    rasterised: for the ICT face this is about 2.5x fewer vertices and triangles. Blender polygons are dropped.
    """
    import dataclasses

    import numpy as np

    tri = model.triangles[model.regions[region][model.triangles].all(1)]
    keep = np.zeros(model.num_vertices, bool)
    keep[tri] = True
    keep[model.landmarks] = True
    new_index = np.cumsum(keep) - 1
    return dataclasses.replace(
        model, neutral=model.neutral[keep], identity_basis=model.identity_basis[:, keep],
        expression_basis=model.expression_basis[:, keep], albedo_mean=model.albedo_mean[keep],
        albedo_basis=model.albedo_basis[:, keep], triangles=new_index[tri].astype(np.int32),
        polygon_start=np.zeros(1, np.int32), polygon_vertices=np.zeros(0, np.int32), polygon_uvs=np.zeros(0, np.int32),
        uvs=np.zeros((0, 2), np.float32), landmarks=new_index[model.landmarks].astype(np.int32),
        regions={name: mask[keep] for name, mask in model.regions.items()})


def landmark_weights(device=None) -> torch.Tensor:
    """(68,) weights of the iBUG landmarks: the jaw contour counts least (it slides along the silhouette),
    eyes and mouth most; mean 1."""
    w = torch.ones(68)
    w[0:17] = 0.5  # jaw contour
    w[36:48] = 2.0  # eyes
    w[48:68] = 2.0  # mouth
    w[[30, 33]] = 2.0  # nose tip and base
    return (w / w.mean()).to(device)


@dataclass
class LossWeights:
    photometric: float = 1.0
    landmark: float = 20.0  # on squared distances in units of the image width
    identity_reg: float = 1e-3
    albedo_reg: float = 1e-3
    expression_reg: float = 1e-3

    def __post_init__(self):
        negative = {k: v for k, v in vars(self).items() if not v >= 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}")

    @classmethod
    def with_reg(cls, weight: float) -> "LossWeights":
        """The default weights with one statistical regulariser weight for identity, albedo and expression."""
        return cls(identity_reg=weight, albedo_reg=weight, expression_reg=weight)


class FaceLoss(torch.nn.Module):
    """Render parameters and compare with generator images and their landmarks.

    Keyword args:
      renderer: FaceRenderer at the images' resolution.
      weights: LossWeights.
      region: the rendered region that the photometric term compares (the model's face skin by default:
        hair, background and shoulders are not part of the face model).
    """

    def __init__(self, renderer: FaceRenderer, weights: LossWeights | None = None, *, region: str = "face_skin"):
        super().__init__()
        self.renderer, self.weights, self.region = renderer, weights or LossWeights(), region
        self.register_buffer("lm_weights", landmark_weights())

    @property
    def layout(self) -> ParamLayout:
        return self.renderer.layout

    def data_terms(self, params: torch.Tensor, images: torch.Tensor | None, landmarks: torch.Tensor,
                   *, photometric: bool = True) -> dict[str, torch.Tensor]:
        """Photometric and landmark terms of params (B, D) against images (B, 3, H, W) and landmarks (B, 68, 2)
        (images may be None with photometric=False: the landmark term alone needs no render)."""
        size = self.renderer.image_size
        if landmarks.shape[1:] != (68, 2):
            raise ValueError(f"landmarks must be (B, 68, 2), got {tuple(landmarks.shape)}")
        terms = {}
        if photometric:
            if images is None or images.shape[1:] != (3, size, size):
                raise ValueError(f"images must be (B, 3, {size}, {size}), got "
                                 f"{None if images is None else tuple(images.shape)}")
            out = self.renderer(params)
            mask = out.regions.get(self.region, out.mask)
            diff = (to_generator_space(out.image) - images) * mask
            per_pixel = (diff.square().sum(1) + 1e-8).sqrt()  # l2 norm over RGB, robust like the paper's
            terms["photometric"] = per_pixel.sum((1, 2)) / mask.sum((1, 2, 3)).clamp_min(1.0)
            predicted = out.landmarks
        else:
            predicted = self.renderer.landmarks(params)
        d2 = ((predicted - landmarks) / size).square().sum(-1)  # (B, 68)
        terms["landmark"] = (d2 * self.lm_weights).mean(-1)
        return terms

    def regulariser(self, params: torch.Tensor) -> torch.Tensor:
        z = self.layout.normalise(params)
        w = self.weights
        return sum(weight * z[:, self.layout.slice(block)].square().sum(-1)
                   for block, weight in (("identity", w.identity_reg), ("albedo", w.albedo_reg),
                                         ("expression", w.expression_reg)))

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) weighted sum of photometric and landmark terms."""
        total = self.weights.landmark * terms["landmark"]
        if "photometric" in terms:
            total = total + self.weights.photometric * terms["photometric"]
        return total


def dfr_loss(loss: FaceLoss, params: torch.Tensor, images: torch.Tensor, landmarks: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """DFR's self-supervised loss: render F(w), compare with I_w and its landmarks, regularise."""
    terms = loss.data_terms(params, images, landmarks)
    reg = loss.regulariser(params)
    total = (loss.weighted(terms) + reg).mean()
    return total, {"loss": total.item(), **{k: v.mean().item() for k, v in terms.items()}, "reg": reg.mean().item()}


@dataclass
class RigNetLossWeights:
    """Weights of RigNet's terms. The paper's L_edit and L_consist compare renders with images; the parameter
    terms compare DFR's readings directly (in prior standard deviations): F(ŵ)'s controlled blocks against the
    target's, F(ŵ)'s other blocks against F(w)'s. They need no render and give every controlled coefficient its
    own gradient, which the render terms do only weakly for small features such as an eyelid (docs/rig.md).
    edit_focus weighs the controlled entries by how much the edit changes them, so that a keyed smile is not
    traded against the cheek squint the world couples with it."""

    reconstruction: float = 1.0
    edit: float = 1.0
    consistency: float = 1.0
    parameter_edit: float = 1.0
    parameter_consistency: float = 3.0
    edit_focus: float = 2.0  # P_edit weighs entry i by 1 + edit_focus · |F(v)_i − F(w)_i| / σ_i: what the edit changes

    def __post_init__(self):
        negative = {k: v for k, v in vars(self).items() if not v >= 0}
        if negative:
            raise ValueError(f"RigNet loss weights must be >= 0, got {negative}")


def rignet_loss(loss: FaceLoss, dfr, rignet, *, w: torch.Tensor, v: torch.Tensor, image_w: torch.Tensor,
                image_v: torch.Tensor, landmarks_w: torch.Tensor, landmarks_v: torch.Tensor,
                weights: RigNetLossWeights | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """RigNet's three losses (StyleRig, Sec. 5):
      L_rec     = || RigNet(w, F(w)) - w ||²
      L_edit    : ŵ = RigNet(w, F(v)); p_edit = F(v) with the controlled blocks from F(ŵ); render vs I_v
      L_consist : p_consist = F(w) with every non-controlled block from F(ŵ); render vs I_w
    DFR is frozen (its parameters get no gradient) but differentiable, so gradients reach RigNet through it.
    """
    weights = weights or RigNetLossWeights()
    layout = loss.layout
    blocks = CONTROL_MODES[rignet.mode]
    p_w, p_v = dfr(w), dfr(v)
    scale = rignet.normaliser.w_std.square().sum() * len(rignet.layers)
    rec = (rignet(w, p_w.detach()) - w).square().sum((1, 2)) / scale
    w_hat = rignet(w, p_v.detach())
    p_hat = dfr(w_hat)
    p_edit = layout.replace(p_v.detach(), p_hat, blocks)
    p_consist = layout.replace(p_hat, p_w.detach(), blocks)
    total = weights.reconstruction * rec
    stats = {"rec": rec.mean().item()}
    if weights.edit:
        total = total + weights.edit * _render_term(loss, "edit", p_edit, image_v, landmarks_v, stats)
    if weights.consistency:
        total = total + weights.consistency * _render_term(loss, "consist", p_consist, image_w, landmarks_w, stats)
    if weights.parameter_edit or weights.parameter_consistency:
        total = total + _parameter_terms(layout, blocks, p_hat, p_v.detach(), p_w.detach(), weights, stats)
    total = total.mean()
    return total, {"loss": total.item(), **stats}


def _render_term(loss: FaceLoss, name: str, params: torch.Tensor, images: torch.Tensor, landmarks: torch.Tensor,
                 stats: dict[str, float]) -> torch.Tensor:
    """(B,) weighted photometric + landmark terms of params against images; adds each term to stats as name_term."""
    terms = loss.data_terms(params, images, landmarks)
    stats.update({f"{name}_{k}": t.mean().item() for k, t in terms.items()})
    return loss.weighted(terms)


def _parameter_terms(layout: ParamLayout, blocks, p_hat: torch.Tensor, p_target: torch.Tensor, p_w: torch.Tensor,
                     weights: RigNetLossWeights, stats: dict[str, float]) -> torch.Tensor:
    """(B,) α_pe · P_edit + α_pc · P_consist: F(ŵ)'s controlled blocks against the target's, its other blocks
    against F(w)'s, in prior standard deviations (P_edit weighs each entry by edit_focus); adds both to stats."""
    controlled = torch.as_tensor(layout.mask(blocks), device=p_hat.device)
    z_hat, z_t, z_w = layout.normalise(p_hat), layout.normalise(p_target), layout.normalise(p_w)
    focus = 1 + weights.edit_focus * (z_t - z_w).abs()  # an animator's key counts more than what stays put
    param_edit = (focus * (z_hat - z_t).square())[:, controlled].sum(1) / focus[:, controlled].sum(1)
    param_consist = (z_hat - z_w).square()[:, ~controlled].mean(1)
    stats.update(param_edit=param_edit.mean().item(), param_consist=param_consist.mean().item())
    return weights.parameter_edit * param_edit + weights.parameter_consistency * param_consist


def key_edit_loss(loss: FaceLoss, dfr, rignet, *, w: torch.Tensor, target: torch.Tensor, image_w: torch.Tensor,
                  landmarks_w: torch.Tensor, weights: RigNetLossWeights | None = None,
                  p_w: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """RigNet's loss for edits towards targets (B, D) that no image shows (key_edits.KeyEditSampler: a face's own
    reading with a few controls keyed): ŵ = RigNet(w, target); the parameter terms (F(ŵ)'s controlled blocks
    against the target, its other blocks against F(w)) and L_consist (F(w) with F(ŵ)'s other blocks, rendered
    against I_w). L_edit has no image to compare with, and L_rec is rignet_loss's. p_w: F(w), when the caller
    has already read it (the targets are keyed on it)."""
    weights = weights or RigNetLossWeights()
    if target.shape != (len(w), loss.layout.dim):
        raise ValueError(f"target must be ({len(w)}, {loss.layout.dim}), got {tuple(target.shape)}")
    layout = loss.layout
    blocks = CONTROL_MODES[rignet.mode]
    p_w = (dfr(w) if p_w is None else p_w).detach()
    p_hat = dfr(rignet(w, target))
    stats: dict[str, float] = {}
    total = _parameter_terms(layout, blocks, p_hat, target, p_w, weights, stats)
    if weights.consistency:
        p_consist = layout.replace(p_hat, p_w, blocks)
        total = total + weights.consistency * _render_term(loss, "consist", p_consist, image_w, landmarks_w, stats)
    total = total.mean()
    return total, {"loss": total.item(), **stats}
