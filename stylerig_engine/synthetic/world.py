"""The synthetic face world: StyleGAN's interface, images rendered from exactly known parameters.

`SyntheticGenerator` has the generator API the rest of the engine uses (mapping with truncation, synthesis of
W+, num_ws, w_dim, z_dim, img_resolution, w_avg). Its images are renders of the default morphable face under
p = h(w) (see latent_map.py) in front of a background, hair and shoulders that also depend on w, so any latent
— sampled, mixed or edited — has exact ground truth: `true_params(ws)`, `landmarks(ws)`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..params import ParamLayout, layout_for_model
from ..render.face import FaceRenderer
from ..render.shading import linear_to_srgb, sh_basis
from .latent_map import RandomFeatureBlock, layer_mix
from .mapping import SyntheticMapping

# Natural expressions as mixes of ARKit blendshapes; each sample activates a few of them.
EXPRESSION_ARCHETYPES: dict[str, dict[str, float]] = {
    "smile": {"mouthSmile_L": 0.9, "mouthSmile_R": 0.9, "cheekSquint_L": 0.4, "cheekSquint_R": 0.4,
              "eyeSquint_L": 0.2, "eyeSquint_R": 0.2},
    "open": {"jawOpen": 0.7, "mouthLowerDown_L": 0.3, "mouthLowerDown_R": 0.3},
    "surprise": {"browInnerUp_L": 0.7, "browInnerUp_R": 0.7, "browOuterUp_L": 0.6, "browOuterUp_R": 0.6,
                 "eyeWide_L": 0.5, "eyeWide_R": 0.5, "jawOpen": 0.3},
    "blink": {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0},
    "frown": {"mouthFrown_L": 0.7, "mouthFrown_R": 0.7, "browDown_L": 0.6, "browDown_R": 0.6},
    "pucker": {"mouthPucker": 0.8, "mouthFunnel": 0.3},
    "smirk": {"mouthSmile_L": 0.7, "mouthLeft": 0.3, "cheekSquint_L": 0.3},
    "sneer": {"noseSneer_L": 0.6, "noseSneer_R": 0.6, "mouthUpperUp_L": 0.4, "mouthUpperUp_R": 0.4},
    "wink": {"eyeBlink_R": 0.9, "cheekSquint_R": 0.3, "mouthSmile_R": 0.3},
}

# Ranges of the world, like FFHQ portraits (untruncated latents reach about these extremes).
YAW_MAX_DEG, PITCH_MAX_DEG, ROLL_MAX_DEG = 45.0, 20.0, 10.0
TRANSLATION_MAX_CM = (1.0, 1.0, 2.0)


def _bounded(x: torch.Tensor, limit: float) -> torch.Tensor:
    """Standard-normal-ish x -> (-limit, limit), about linear near 0."""
    return limit * torch.tanh(x / 1.6)


class SyntheticParamMap(nn.Module):
    """h: W+ -> (face parameters in `layout`, scene parameters for background/hair/clothing)."""

    def __init__(self, layout: ParamLayout, expression_names: list[str], sh_projection: torch.Tensor, *,
                 num_ws: int, w_dim: int, w_avg: torch.Tensor, w_std: torch.Tensor, seed: int):
        super().__init__()
        self.layout = layout
        self.num_ws, self.w_dim = num_ws, w_dim
        g = torch.Generator().manual_seed(seed + 1)
        self.register_buffer("w_avg", w_avg.clone())
        self.register_buffer("w_std", w_std.clone())
        n_id, n_alb, n_exp = (layout.size(b) for b in ("identity", "albedo", "expression"))
        self.blocks = nn.ModuleDict({
            "pose": RandomFeatureBlock(layer_mix("pose", num_ws), w_dim, 6, g),
            "identity": RandomFeatureBlock(layer_mix("identity", num_ws), w_dim, n_id, g, proj_dim=24, hidden=96),
            "expression": RandomFeatureBlock(layer_mix("expression", num_ws), w_dim,
                                             len(EXPRESSION_ARCHETYPES) + n_exp, g, proj_dim=16, hidden=64),
            "albedo": RandomFeatureBlock(layer_mix("albedo", num_ws), w_dim, n_alb, g),
            # ambient (1), light direction (3), strength (1), tint (3 light, 3 ambient)
            "illumination": RandomFeatureBlock(layer_mix("illumination", num_ws), w_dim, 11, g),
            "background": RandomFeatureBlock(layer_mix("background", num_ws), w_dim, 8, g),
            "hair": RandomFeatureBlock(layer_mix("hair", num_ws), w_dim, 7, g),
            "clothing": RandomFeatureBlock(layer_mix("clothing", num_ws), w_dim, 5, g),
        })
        archetypes = torch.zeros(len(EXPRESSION_ARCHETYPES), n_exp)
        index = {name: i for i, name in enumerate(expression_names)}
        for k, shape in enumerate(EXPRESSION_ARCHETYPES.values()):
            for name, weight in shape.items():
                if name in index:
                    archetypes[k, index[name]] = weight
        self.register_buffer("archetypes", archetypes)
        # Irradiance of a distant light along d, max(n . d, 0), projected onto the renderer's SH basis by least
        # squares over normals sampled evenly on the sphere (= its band-limited SH expansion).
        self.register_buffer("sh_dirs", sh_projection[0])  # (S, 3) sample normals
        self.register_buffer("sh_pinv", sh_projection[1])  # (9, S) least-squares projection

    def normalise(self, ws: torch.Tensor) -> torch.Tensor:
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim), \
            f"ws must be (B, {self.num_ws}, {self.w_dim})"
        return (ws - self.w_avg) / self.w_std

    def calibrate(self, w: torch.Tensor) -> None:
        """Standardise every block over untruncated, unmixed latents w (B, w_dim)."""
        wn = (w - self.w_avg) / self.w_std
        for block in self.blocks.values():
            block.calibrate(wn)

    def forward(self, ws: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ws (B, num_ws, w_dim) -> (p (B, D), scene dict of (B, k) tensors)."""
        wn = self.normalise(ws)
        out = {name: block(wn) for name, block in self.blocks.items()}
        lay = self.layout
        b = ws.shape[0]
        p = torch.zeros(b, lay.dim, dtype=ws.dtype, device=ws.device)
        pose = out["pose"]
        p[:, lay.slice("rotation")] = torch.stack([
            _bounded(pose[:, 0], math.radians(PITCH_MAX_DEG)),
            _bounded(pose[:, 1], math.radians(YAW_MAX_DEG)),
            _bounded(pose[:, 2], math.radians(ROLL_MAX_DEG))], -1)
        p[:, lay.slice("translation")] = torch.stack(
            [_bounded(pose[:, 3 + i], m) for i, m in enumerate(TRANSLATION_MAX_CM)], -1)
        p[:, lay.slice("identity")] = _bounded(out["identity"], 2.5)
        p[:, lay.slice("albedo")] = _bounded(out["albedo"], 2.0)  # beyond ~2 std some skins leave [0, 1]
        # expression: a few active archetypes plus small independent blendshape activity
        e = out["expression"]
        k = self.archetypes.shape[0]
        activation = torch.sigmoid(2.2 * (e[:, :k] - 1.3))
        detail = 0.06 * torch.relu(e[:, k:] - 0.5)
        p[:, lay.slice("expression")] = (activation @ self.archetypes + detail).clamp(0.0, 1.0)
        p[:, lay.slice("illumination")] = self._lighting(out["illumination"])
        return p, {name: out[name] for name in ("background", "hair", "clothing")}

    def _lighting(self, x: torch.Tensor) -> torch.Tensor:
        """Ambient + one distant light of varying direction, strength and colour -> (B, 27) SH coefficients."""
        ambient = 0.65 + 0.15 * torch.tanh(x[:, 0:1])  # (B, 1)
        # favour light from the front and above
        d = x[:, 1:4] + torch.tensor([0.0, 0.8, 1.6], dtype=x.dtype, device=x.device)
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        strength = 0.7 + 0.35 * torch.tanh(x[:, 4:5])
        light_tint = 1.0 + 0.12 * torch.tanh(x[:, 5:8])
        ambient_tint = 1.0 + 0.08 * torch.tanh(x[:, 8:11])
        irradiance = torch.relu(d @ self.sh_dirs.T)  # (B, S) clamped cosine
        lobe = irradiance @ self.sh_pinv.T  # (B, 9)
        sh = lobe[:, :, None] * strength[:, :, None] * light_tint[:, None, :]  # (B, 9, 3)
        sh[:, 0, :] += ambient * ambient_tint
        return sh.reshape(x.shape[0], 27)


def sh_projection(samples: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Evenly spread unit normals (Fibonacci sphere) and the least-squares map from values on them to SH."""
    i = torch.arange(samples, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / samples
    phi = math.pi * (1 + 5 ** 0.5) * i
    r = (1 - z * z).sqrt()
    dirs = torch.stack([r * phi.cos(), r * phi.sin(), z], -1)
    pinv = torch.linalg.pinv(sh_basis(dirs))  # (9, S)
    return dirs.float(), pinv.float()


# Hair colours (linear RGB): black, dark brown, brown, auburn, blond, grey.
HAIR_PALETTE = torch.tensor([[0.02, 0.018, 0.016], [0.06, 0.035, 0.02], [0.16, 0.09, 0.05], [0.25, 0.08, 0.03],
                             [0.45, 0.32, 0.15], [0.35, 0.34, 0.33]])


class SyntheticGenerator(nn.Module):
    """A portrait generator with StyleGAN2's interface whose every image has exactly known face parameters.

    Keyword args:
      model: the MorphableModel to render (default: the default ICT model).
      resolution: image side in pixels (64-256 are practical on a CPU); the latent space does not depend on it.
      num_ws: W+ layers (14, like a 256x256 StyleGAN2).
      w_dim: latent width (512, like StyleGAN2); z_dim equals it.
      seed: fixes the world: the mapping network, h and the scene. Same seed, same world.
      device: where it runs.
    """

    def __init__(self, model=None, *, resolution: int = 256, num_ws: int = 14, w_dim: int = 512, seed: int = 0,
                 device: str | torch.device = "cpu"):
        super().__init__()
        if model is None:
            from ..facemodel import load_default_model

            model = load_default_model()
        self.model = model
        self.seed = seed
        self.z_dim = self.w_dim = w_dim
        self.num_ws = num_ws
        self.img_resolution = resolution
        self.img_channels = 3
        self.c_dim = 0  # unconditional, like the FFHQ generators
        self.layout = layout_for_model(model)
        self.mapping_network = SyntheticMapping(w_dim, w_dim, seed=seed)
        self.params_map = SyntheticParamMap(self.layout, list(model.expression_names), sh_projection(),
                                            num_ws=num_ws, w_dim=w_dim, w_avg=self.mapping_network.w_avg,
                                            w_std=self.mapping_network.w_std, seed=seed)
        with torch.no_grad():  # standardise h's outputs over untruncated latents
            z = torch.randn(8000, w_dim, generator=torch.Generator().manual_seed(seed + 2))
            self.params_map.calibrate(self.mapping_network(z))
        self.renderer = FaceRenderer(model, self.layout, image_size=resolution)
        # Scalp vertices take the hair colour: the head/neck region above the ears, blended over 2 cm.
        y = torch.as_tensor(model.neutral[:, 1])
        head = torch.as_tensor(model.regions.get("head_neck", np.zeros(model.num_vertices, bool)))
        self.register_buffer("scalp_weight", (head.float() * torch.sigmoid((y - 1.0) / 1.0))[None, :, None])
        g = torch.Generator().manual_seed(seed + 3)
        self.register_buffer("const_grain", torch.randn(1, 1, resolution, resolution, generator=g))
        self.to(device)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping_network.w_avg

    @property
    def device(self) -> torch.device:
        return self.w_avg.device

    # ---- StyleGAN interface ----------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor, c=None, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        """z (B, z_dim) -> ws (B, num_ws, w_dim), truncated towards w_avg by psi on the first `cutoff` layers."""
        w = self.mapping_network(z.to(self.device, torch.float32))
        ws = w[:, None].repeat(1, self.num_ws, 1)
        if psi != 1:
            layers = slice(None) if cutoff is None else slice(0, cutoff)
            ws[:, layers] = self.w_avg + psi * (ws[:, layers] - self.w_avg)
        return ws

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const", **_) -> torch.Tensor:
        """ws (B, num_ws, w_dim) -> images (B, 3, R, R), sRGB in [-1, 1] like StyleGAN's output."""
        return self.render(ws, noise_mode=noise_mode)["image"]

    def forward(self, z: torch.Tensor, c=None, psi: float = 1.0, cutoff: int | None = None,
                noise_mode: str = "const") -> torch.Tensor:
        return self.synthesis(self.mapping(z, psi=psi, cutoff=cutoff), noise_mode=noise_mode)

    # ---- exact truth -----------------------------------------------------------------------------------
    def true_params(self, ws: torch.Tensor) -> torch.Tensor:
        """ws (B, num_ws, w_dim) -> (B, D) the face parameters the image of ws is rendered from."""
        return self.params_map(ws.to(self.device, torch.float32))[0]

    def landmarks(self, ws: torch.Tensor) -> torch.Tensor:
        """ws -> (B, 68, 2) exact landmark pixel coordinates at img_resolution (cameras.py convention)."""
        return self.renderer.landmarks(self.true_params(ws))

    @torch.no_grad()
    def render(self, ws: torch.Tensor, noise_mode: str = "const") -> dict[str, torch.Tensor]:
        """Everything about the images of ws: image (sRGB, [-1, 1]), params, landmarks, face mask, regions."""
        if noise_mode not in ("const", "random", "none"):
            raise ValueError(f"noise_mode must be const, random or none, got {noise_mode!r}")
        ws = ws.to(self.device, torch.float32)
        p, scene = self.params_map(ws)
        r = self.renderer
        b, size = ws.shape[0], self.img_resolution
        verts, normals = r.geometry(p)
        screen = r.camera.project(verts)
        backdrop = self._backdrop(scene, screen)
        hair = self._hair_colour(scene["hair"])
        albedo = torch.lerp(r.albedo(p), hair[:, None, :].expand(-1, verts.shape[1], -1), self.scalp_weight)
        out = r.renderer(verts, r.faces, albedo=albedo, sh=r.layout.split(p)["illumination"], background=backdrop,
                         landmarks=r.landmark_ids, regions=r.regions, normals=normals)
        colour, coverage = self._clothing(scene, screen)
        coverage = coverage * (1 - out.regions["face_skin"])  # clothes never cover the face
        image = linear_to_srgb(torch.lerp(out.image, colour.expand_as(out.image), coverage))
        if noise_mode != "none":
            grain = self.const_grain if noise_mode == "const" else torch.randn(b, 1, size, size, device=self.device)
            image = image + 0.012 * grain * (1 - out.mask)  # stochastic detail off the face, like StyleGAN's noise
        return dict(image=(image * 2 - 1).clamp(-1, 1), params=p, landmarks=out.landmarks, mask=out.mask,
                    regions=out.regions)

    # ---- the scene around the face -----------------------------------------------------------------------
    def _hair_colour(self, h: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(1.5 * h[:, :HAIR_PALETTE.shape[0]], dim=-1)
        return weights @ HAIR_PALETTE.to(h)

    def _backdrop(self, scene: dict[str, torch.Tensor], screen: torch.Tensor) -> torch.Tensor:
        """Background, shoulders and hair behind the head, in linear RGB (B, 3, R, R)."""
        size, dev = self.img_resolution, self.device
        b = screen.shape[0]
        ys, xs = torch.meshgrid(torch.linspace(0, 1, size, device=dev), torch.linspace(0, 1, size, device=dev),
                                indexing="ij")
        xs, ys = xs[None], ys[None]
        bg = scene["background"]
        top = torch.sigmoid(bg[:, 0:3] * 0.8 - 0.3) * 0.7  # (B, 3)
        bottom = torch.sigmoid(bg[:, 3:6] * 0.8 - 0.6) * 0.6
        image = torch.lerp(top[:, :, None, None], bottom[:, :, None, None], ys[:, None])
        spot_x = 0.5 + 0.35 * torch.tanh(bg[:, 6])
        spot = torch.exp(-((xs - spot_x[:, None, None]) ** 2 + (ys - 0.25) ** 2) / 0.08)
        image = image * (1 + 0.6 * torch.sigmoid(bg[:, 7])[:, None, None, None] * spot[:, None])
        # head anchors in the image: the projected mesh's horizontal centre, top and scale
        sx, sy = screen[..., 0] / (size - 1), screen[..., 1] / (size - 1)
        cx = sx.mean(1)
        top_y = sy.min(1).values
        width = (sx.max(1).values - sx.min(1).values)
        # hair: an ellipse behind the head, its volume and length varying with the latent
        h = scene["hair"]
        colour = self._hair_colour(h)
        volume = 1.15 + 0.3 * torch.sigmoid(h[:, 6])
        rx = (width * 0.5 * volume)[:, None, None]
        length = 0.45 + 0.3 * torch.sigmoid(h[:, 5])[:, None, None]
        cy = (top_y[:, None, None] + rx * 0.8)
        ry = torch.where(ys < cy, rx * 1.05, length)
        ell = ((xs - cx[:, None, None]) / rx) ** 2 + ((ys - cy) / ry) ** 2
        hair = torch.sigmoid((1 - ell) * size * 0.25)
        image = torch.lerp(image, colour[:, :, None, None], hair[:, None])
        return image.expand(b, 3, size, size)

    def _clothing(self, scene: dict[str, torch.Tensor], screen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shoulders in front of the neck: (colour (B, 3, 1, 1) linear RGB, coverage (B, 1, R, R) in [0, 1])."""
        size, dev = self.img_resolution, self.device
        ys, xs = torch.meshgrid(torch.linspace(0, 1, size, device=dev), torch.linspace(0, 1, size, device=dev),
                                indexing="ij")
        cx = (screen[..., 0] / (size - 1)).mean(1)[:, None, None]
        cl = scene["clothing"]
        colour = torch.sigmoid(cl[:, 0:3] * 0.9 - 0.4) * 0.5
        width = (0.46 + 0.06 * torch.tanh(cl[:, 3]))[:, None, None]
        top = (0.84 + 0.04 * torch.tanh(cl[:, 4]))[:, None, None]
        dx, dy = (xs - cx) / width, (ys - 1.3) / (1.3 - top)
        coverage = torch.sigmoid((1 - (dx ** 2 + dy ** 2)) * size * 0.08)
        return colour[:, :, None, None], coverage[:, None]
