"""The synthetic world: StyleGAN's interface, exact truth, entanglement, nonlinearity, smoothness."""

import numpy as np
import pytest
import torch

from stylerig_engine.facemodel import load_default_model
from stylerig_engine.render.face import FaceRenderer
from stylerig_engine.render.shading import linear_to_srgb
from stylerig_engine.synthetic import SyntheticGenerator


@pytest.fixture(scope="module")
def world():
    return SyntheticGenerator(load_default_model(), resolution=64, seed=0)


def latents(G, n, seed, psi=1.0):
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    return G.mapping(z, psi=psi)


def block_change(G, p, q):
    """Per block: RMS change in units of prior std (rotation in degrees)."""
    lay = G.layout
    d = (lay.normalise(q) - lay.normalise(p))
    return {b: float(d[:, lay.slice(b)].square().mean().sqrt()) for b, _ in lay.sizes}


def test_interface_like_stylegan(world):
    G = world
    assert (G.num_ws, G.w_dim, G.z_dim, G.img_resolution) == (14, 512, 512, 64)
    ws = latents(G, 3, 0, psi=0.7)
    assert ws.shape == (3, 14, 512)
    assert torch.allclose(latents(G, 2, 0, psi=0.0), G.w_avg.expand(2, 14, 512))
    cut = G.mapping(torch.randn(2, 512), psi=0.0, cutoff=4)
    assert torch.allclose(cut[:, :4], G.w_avg.expand(2, 4, 512)) and not torch.allclose(cut[:, 4:], G.w_avg)
    img = G.synthesis(ws)
    assert img.shape == (3, 3, 64, 64) and img.min() >= -1 and img.max() <= 1
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="bogus")


def test_deterministic_for_a_seed(world):
    from stylerig_engine.synthetic import SyntheticGenerator

    other = SyntheticGenerator(world.model, resolution=64, seed=0)
    ws = latents(world, 2, 1)
    assert torch.equal(world.synthesis(ws), other.synthesis(ws))
    different = SyntheticGenerator(world.model, resolution=64, seed=1)
    assert not torch.allclose(world.true_params(ws), different.true_params(ws))


def test_true_params_reproduce_the_render(world):
    """Inside the face, the image of ws is exactly the render of true_params(ws)."""
    G = world
    ws = latents(G, 4, 2, psi=0.8)
    out = G.render(ws, noise_mode="const")
    plain = FaceRenderer(G.model, G.layout, image_size=64)(G.true_params(ws))
    face = plain.regions["face_skin"].bool().expand(-1, 3, -1, -1)
    expected = linear_to_srgb(plain.image) * 2 - 1
    assert face.sum() > 4 * 3 * 300  # the face covers a good part of each image
    assert torch.allclose(out["image"][face], expected[face], atol=1e-5)
    assert torch.allclose(G.landmarks(ws), plain.landmarks, atol=1e-4)
    # landmarks fall on the rendered face
    lm = plain.landmarks.round().long().clamp(0, 63)
    covered = plain.mask[torch.arange(4)[:, None], 0, lm[..., 1], lm[..., 0]]
    assert covered.mean() > 0.9


def test_parameter_ranges_like_ffhq(world):
    G = world
    p = G.true_params(latents(G, 4000, 3))
    lay = G.layout
    rot = torch.rad2deg(p[:, lay.slice("rotation")])
    assert rot.abs().max(0).values[1] <= 45.0 and rot[:, 1].std() > 15  # yaw reaches about +-45 degrees
    assert rot.abs().max(0).values[0] <= 20.0 and rot[:, 0].std() > 6  # pitch about +-20 degrees
    e = p[:, lay.slice("expression")]
    assert e.min() >= 0 and e.max() <= 1 and (e > 0.5).any(1).float().mean() > 0.1  # some clear expressions
    ambient = p[:, lay.offset("illumination")]
    assert ambient.min() > 0.4 and ambient.max() < 1.3


def test_nonlinear_in_earnest(world):
    """A linear regression from W+ leaves >= 10% of every block's variance unexplained (held-out data)."""
    G = world
    ws = latents(G, 6000, 4)
    p = G.true_params(ws).double().numpy()
    w = ws[:, 0].double().numpy()  # unmixed latents: W+ is w repeated, so this is regression from W+
    x = np.c_[w, np.ones(len(w))]
    coef, *_ = np.linalg.lstsq(x[:5000], p[:5000], rcond=None)
    residual = p[5000:] - x[5000:] @ coef
    report = {}
    for block, _ in G.layout.sizes:
        s = G.layout.slice(block)
        var = p[5000:, s].var(0)
        live = var > 1e-10
        report[block] = float((residual[:, s].var(0)[live] / var[live]).min())
    print("least unexplained variance fraction per block:", report)
    assert all(v >= 0.10 for v in report.values()), report


def test_smooth_latent_space(world):
    """Small latent steps make proportionally small parameter changes."""
    G = world
    ws = latents(G, 64, 5)
    d = torch.randn(ws.shape, generator=torch.Generator().manual_seed(6))
    d = d / d.norm(dim=(1, 2), keepdim=True) * ws.norm(dim=(1, 2), keepdim=True)
    p0 = G.layout.normalise(G.true_params(ws))
    steps = [1e-3, 1e-2]
    change = [(G.layout.normalise(G.true_params(ws + s * d)) - p0).norm(dim=1) for s in steps]
    assert change[0].median() < 0.05 and change[0].max() < 0.25
    ratio = (change[1] / change[0].clamp_min(1e-9)).median()
    assert 8 < ratio < 12  # ~linear at small scales: no jumps


def test_random_direction_moves_several_blocks(world):
    G = world
    ws = latents(G, 32, 7)
    d = torch.randn(ws.shape, generator=torch.Generator().manual_seed(8)) * G.params_map.w_std * 0.5
    change = block_change(G, G.true_params(ws), G.true_params(ws + d))
    moved = [b for b, c in change.items() if c > 0.1]
    assert len(moved) >= 5, change


def test_naive_pose_edit_disturbs_other_blocks_and_the_scene(world):
    """Copying the coarse layers of another latent changes pose, but also identity and the background."""
    G = world
    w, v = latents(G, 16, 9), latents(G, 16, 10)
    edited = w.clone()
    edited[:, :4] = v[:, :4]
    change = block_change(G, G.true_params(w), G.true_params(edited))
    assert change["rotation"] > 0.5
    assert change["identity"] > 0.2 and change["expression"] > 0.02
    a, b = G.render(w), G.render(edited)
    outside = (a["mask"] == 0) & (b["mask"] == 0)
    diff = (a["image"] - b["image"]).abs().mean(1, keepdim=True)[outside]
    assert diff.mean() > 0.02  # background / hair / shoulders depend on w too


def test_fine_layers_change_light_not_pose(world):
    G = world
    w, v = latents(G, 16, 11), latents(G, 16, 12)
    edited = w.clone()
    edited[:, 9:] = v[:, 9:]
    change = block_change(G, G.true_params(w), G.true_params(edited))
    assert change["illumination"] > 0.3 and change["albedo"] > 0.3
    assert change["rotation"] < 0.05 and change["identity"] < 0.05


def test_generate_command_works_with_the_synthetic_world(world, tmp_path):
    """`stylerig generate --generator synthetic:64` like any other generator: seed -> NVIDIA's z -> PNG + W+."""
    from PIL import Image

    from stylerig_engine.cli import main

    assert main(["generate", "--generator", "synthetic:64", "--seeds", "5,7", "--psi", "0.7",
                 "--out", str(tmp_path)]) == 0
    ws = np.load(tmp_path / "seed0007.npy")
    assert ws.shape[-2:] == (14, 512)
    z = torch.from_numpy(np.random.RandomState(7).randn(1, 512)).float()
    assert np.allclose(ws.reshape(14, 512), world.mapping(z, psi=0.7)[0].numpy(), atol=1e-5)
    png = np.asarray(Image.open(tmp_path / "seed0007.png"))
    expected = ((world.synthesis(world.mapping(z, psi=0.7))[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255)
    assert png.shape == (64, 64, 3) and np.abs(png - expected.numpy()).max() <= 1.0
