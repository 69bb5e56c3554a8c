"""StyleGAN2 generator: exactness against NVIDIA's outputs, op fast paths vs references, API behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stylerig_engine.stylegan2 import networks as nw
from stylerig_engine.stylegan2 import ops
from stylerig_engine.stylegan2.inference import FastGenerator, InferenceOptions, set_fp16_resolutions, tf32_mode
from stylerig_engine.stylegan2.networks import Generator

FIXTURE = "fixtures/stylegan2/sg3_r64_ref.npz"  # in the shared_dir
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def tiny_generator(seed: int = 0, res: int = 16, **synthesis_kwargs) -> Generator:
    torch.manual_seed(seed)
    kw = {"channel_base": 256, "channel_max": 32}
    kw.update(synthesis_kwargs)
    G = Generator(z_dim=32, w_dim=32, img_resolution=res, img_channels=3, mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs=kw)
    with torch.no_grad():  # non-zero noise strengths, biases, w_avg so that every term matters
        for name, p in G.named_parameters():
            if name.endswith("noise_strength") or (name.endswith("bias") and "affine" not in name):
                p.copy_(torch.randn_like(p) * 0.5)
        G.mapping.w_avg.copy_(torch.randn(32))
    return G.eval()


@pytest.fixture(scope="module")
def ref(shared_dir):
    path = shared_dir / FIXTURE
    if not path.exists():
        pytest.skip(f"{path} not available")
    return dict(np.load(path))


@pytest.fixture(scope="module")
def fixture_generator(ref):
    G = Generator(z_dim=int(ref["z_dim"]), c_dim=0, w_dim=int(ref["w_dim"]), img_resolution=int(ref["res"]),
                  img_channels=int(ref["img_channels"]), mapping_kwargs={"num_layers": int(ref["mapping_layers"])},
                  synthesis_kwargs={"channel_base": int(ref["channel_base"]), "channel_max": int(ref["channel_max"])})
    state = {k[len("param/"):]: torch.from_numpy(v) for k, v in ref.items() if k.startswith("param/")}
    result = G.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return G.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------
# Exactness against NVIDIA's implementation


def test_fixture_state_dict_names_match_one_to_one(ref, fixture_generator):
    ours = fixture_generator.state_dict()
    theirs = {k[len("param/"):]: v for k, v in ref.items() if k.startswith("param/")}
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert tuple(ours[k].shape) == v.shape, k
    assert fixture_generator.num_ws == int(ref["num_ws"])


def test_mapping_matches_nvidia(ref, fixture_generator):
    z = torch.from_numpy(ref["z"])
    with torch.no_grad():
        ws07 = fixture_generator.mapping(z, psi=float(ref["psi"]))
        ws1 = fixture_generator.mapping(z, psi=1.0)
    assert ws07.shape == ref["ws_psi07"].shape
    assert (ws07 - torch.from_numpy(ref["ws_psi07"])).abs().max().item() < 1e-4
    assert (ws1 - torch.from_numpy(ref["ws_psi1"])).abs().max().item() < 1e-4


@pytest.mark.parametrize("fast", [True, False], ids=["fast-ops", "reference-ops"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_synthesis_matches_nvidia(ref, fixture_generator, fast, fused):
    G = fixture_generator
    G.synthesis.fast = fast
    try:
        with torch.no_grad():
            img = G.synthesis(torch.from_numpy(ref["ws_psi07"]), noise_mode="const", fused_modconv=fused)
            img_nonoise = G.synthesis(torch.from_numpy(ref["ws_psi1"]), noise_mode="none", fused_modconv=fused)
    finally:
        G.synthesis.fast = True
    assert img.shape == ref["img_psi07_const"].shape and img.dtype == torch.float32
    assert (img - torch.from_numpy(ref["img_psi07_const"])).abs().max().item() < 1e-4
    assert (img_nonoise - torch.from_numpy(ref["img_psi1_nonoise"])).abs().max().item() < 1e-4


def test_generator_call_is_mapping_then_synthesis(ref, fixture_generator):
    z = torch.from_numpy(ref["z"][:2])
    with torch.no_grad():
        img = fixture_generator(z, psi=0.7, noise_mode="const")
    assert (img - torch.from_numpy(ref["img_psi07_const"][:2])).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------------------------------------
# Ops: fast paths compute the reference function


def test_setup_filter_is_nvidias_normalised_outer_product():
    f = ops.setup_filter([1, 3, 3, 1])
    expected = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    assert torch.equal(f, expected)
    assert torch.equal(ops.setup_filter([1, 3, 3, 1], gain=4), expected * 4)


def test_upfirdn2d_ref_semantics_by_hand():
    # 1-D view: up=2 inserts zeros, padding, true convolution with the filter (flip), gain.
    x = torch.zeros(1, 1, 1, 3)
    x[0, 0, 0, 1] = 1.0
    f = torch.tensor([[1.0, 2.0, 3.0]])  # 2-D [1, 3], asymmetric to see the flip
    y = ops.upfirdn2d_ref(x, f, up=2, padding=[2, 1, 0, 0])
    # Both axes are upsampled: row 0 holds the data, row 1 the inserted zeros. Along x: upsampled
    # [0,0,1,0,0,0]; padded [0,0, 0,0,1,0,0,0, 0]; a true convolution with [1,2,3] puts the impulse response
    # [1,2,3] starting at the impulse.
    assert y.shape == (1, 1, 2, 7) and not y[0, 0, 1].any()
    assert y[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0]
    y_corr = ops.upfirdn2d_ref(x, f, up=2, padding=[2, 1, 0, 0], flip_filter=True)
    assert y_corr[0, 0, 0].tolist() == [0.0, 0.0, 3.0, 2.0, 1.0, 0.0, 0.0]
    assert torch.equal(ops.upfirdn2d_ref(x, f, up=2, padding=[2, 1, 0, 0], gain=3), y * 3)
    # negative padding crops; down keeps every second sample (of both axes)
    assert ops.upfirdn2d_ref(x, f, up=2, padding=[-1, 0, 0, 0]).shape[-1] == 3
    y_down = ops.upfirdn2d_ref(x, f, up=2, padding=[2, 1, 0, 0], down=2)
    assert y_down.shape == (1, 1, 1, 4) and y_down.flatten().tolist() == [0.0, 1.0, 3.0, 0.0]


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (2, 5, 7, 9)])
def test_upsample2d_fast_equals_reference(shape):
    torch.manual_seed(1)
    x = torch.randn(shape)
    f = ops.setup_filter([1, 3, 3, 1])
    ref = ops.upsample2d_ref(x, f)
    out = ops.upsample2d(x, f)
    assert out.shape == (shape[0], shape[1], shape[2] * 2, shape[3] * 2)
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    cl = ops.upsample2d(x.contiguous(memory_format=torch.channels_last), f)
    assert torch.allclose(cl, ref, atol=1e-6, rtol=0)


def test_filter2d_padded_equals_reference():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 9, 9)
    f = ops.setup_filter([1, 3, 3, 1])
    assert torch.allclose(ops.filter2d_padded(x, f, padding=1, gain=4), ops.upfirdn2d_ref(x, f, padding=1, gain=4),
                          atol=1e-6, rtol=0)


def test_upsampling_conv_equals_zero_insertion_then_filter_then_conv():
    """conv2d_resample(up=2) (transposed conv + filter) is the same linear map as NVIDIA's generic path:
    upsample with zeros and pad (3, 2), FIR-filter with gain 4, then an unpadded 3x3 *convolution*
    (flip_weight=False)."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    f = ops.setup_filter([1, 3, 3, 1]).to(torch.float64)
    out = ops.conv2d_resample(x, w, f=f.float(), up=2, padding=1, flip_weight=False, fast=False)
    up = ops.upfirdn2d_ref(x, f.float(), up=2, padding=[3, 2, 3, 2], gain=4)
    expected = torch.nn.functional.conv2d(up, w.flip([2, 3]))
    assert out.shape == (2, 4, 10, 10)
    assert torch.allclose(out, expected, atol=1e-10)


def test_bias_act_inplace_equals_reference_and_keeps_autograd():
    torch.manual_seed(4)
    x = torch.randn(3, 5, 4, 4) * 300
    b = torch.randn(5)
    ref = ops.bias_act_ref(x, b, act="lrelu", clamp=256)
    assert ref.abs().max() <= 256
    assert torch.equal(ops.bias_act(x.clone(), b, act="lrelu", clamp=256), ref)
    xr = x.clone().requires_grad_(True)
    out = ops.bias_act(xr * 1.0, b, act="lrelu", gain=2.0)
    out.sum().backward()
    assert torch.allclose(xr.grad, torch.where(x + b.view(1, -1, 1, 1) > 0, 2.0, 0.4))


def test_modulated_conv_fused_equals_unfused():
    torch.manual_seed(5)
    x = torch.randn(3, 6, 8, 8)
    w = torch.randn(5, 6, 3, 3)
    s = torch.randn(3, 6)
    noise = torch.randn(3, 1, 16, 16)
    f = ops.setup_filter([1, 3, 3, 1])
    for up, pad, flip in [(1, 1, True), (2, 1, False)]:
        a = ops.modulated_conv2d(x, w, s, noise=noise if up == 2 else None, up=up, padding=pad, resample_filter=f,
                                flip_weight=flip, fused_modconv=True)
        b = ops.modulated_conv2d(x, w, s, noise=noise if up == 2 else None, up=up, padding=pad, resample_filter=f,
                                flip_weight=flip, fused_modconv=False)
        assert torch.allclose(a, b, atol=1e-5)
    # Demodulation: with unit input energy per channel each output channel's weights have unit norm.
    ww = w.unsqueeze(0) * s.view(3, 1, 6, 1, 1)
    d = (ww.square().sum([2, 3, 4]) + 1e-8).rsqrt()
    assert torch.allclose((ww * d.view(3, 5, 1, 1, 1)).square().sum([2, 3, 4]), torch.ones(3, 5), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Generator behaviour


def test_api_and_shapes():
    G = tiny_generator()
    assert (G.z_dim, G.w_dim, G.img_resolution, G.num_ws) == (32, 32, 16, 6)  # 2 * log2(16) - 2
    assert G.w_avg.shape == (32,)
    z = torch.randn(2, 32)
    with torch.no_grad():
        ws = G.mapping(z)
        img = G.synthesis(ws)
    assert ws.shape == (2, 6, 32) and img.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="ws"):
        G.synthesis(ws[:, :5])
    with pytest.raises(ValueError, match="z"):
        G.mapping(torch.randn(2, 31))
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="bogus")
    assert set(Generator(**G.config).state_dict()) == set(G.state_dict())


def test_truncation_and_cutoff():
    G = tiny_generator()
    z = torch.randn(3, 32)
    with torch.no_grad():
        w1 = G.mapping(z)
        w0 = G.mapping(z, psi=0.0)
        w5 = G.mapping(z, psi=0.5)
        wc = G.mapping(z, psi=0.5, cutoff=3)
    assert torch.allclose(w0, G.w_avg.expand_as(w0))
    assert torch.allclose(w5, G.w_avg + 0.5 * (w1 - G.w_avg), atol=1e-6)
    assert torch.allclose(wc[:, :3], w5[:, :3]) and torch.equal(wc[:, 3:], w1[:, 3:])
    assert torch.equal(w1[:, 0], w1[:, -1])  # broadcast: every ws row is the same w


def test_noise_modes():
    G = tiny_generator()
    ws = G.mapping(torch.randn(1, 32)).detach()
    with torch.no_grad():
        const_a, const_b = G.synthesis(ws, "const"), G.synthesis(ws, "const")
        none = G.synthesis(ws, "none")
        torch.manual_seed(0)
        rand_a = G.synthesis(ws, "random")
        rand_b = G.synthesis(ws, "random")
        torch.manual_seed(0)
        rand_a2 = G.synthesis(ws, "random")
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(const_a, none) and not torch.allclose(rand_a, rand_b)
    assert torch.equal(rand_a, rand_a2)
    # With zero noise strengths, all three modes agree.
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.zero_()
        assert torch.allclose(G.synthesis(ws, "const"), G.synthesis(ws, "none"))


def test_gradients_flow_to_ws_and_match_reference_ops():
    """StyleRig trains through the frozen generator: gradients w.r.t. W+ must exist and be the same with
    fast and reference ops (the in-place fast paths step aside when autograd needs the tensors)."""
    G = tiny_generator().requires_grad_(False)
    ws = G.mapping(torch.randn(2, 32)).detach()
    grads = []
    for fast in (True, False):
        G.synthesis.fast = fast
        w = ws.clone().requires_grad_(True)
        G.synthesis(w, "const").square().mean().backward()
        grads.append(w.grad)
    G.synthesis.fast = True
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_conv_clamp_clamps_activations():
    G = tiny_generator(conv_clamp=0.05)
    seen = []
    hook = G.synthesis.b8.conv1.register_forward_hook(lambda m, i, o: seen.append(o.abs().max().item()))
    with torch.no_grad():
        G(torch.randn(2, 32))
    hook.remove()
    assert seen and seen[0] <= 0.05 + 1e-7


def test_fp16_blocks_follow_nvidias_rule_and_stay_fp32_on_cpu():
    G = tiny_generator(res=32, num_fp16_res=2)
    used = {res: getattr(G.synthesis, f"b{res}").use_fp16 for res in G.synthesis.block_resolutions}
    assert used == {4: False, 8: False, 16: True, 32: True}
    set_fp16_resolutions(G, 10)
    assert [getattr(G.synthesis, f"b{r}").use_fp16 for r in (4, 8)] == [False, True]  # 4x4 never
    ws = G.mapping(torch.randn(1, 32)).detach()
    with torch.no_grad():
        plain = G.synthesis(ws)
        fast = FastGenerator(G, InferenceOptions(fp16=True)).synthesis(ws)
    assert fast.dtype == torch.float32 and torch.equal(plain, fast)  # CPU: fp16 request has no effect


def test_fast_generator_cpu_options_compute_the_same_images():
    G = tiny_generator()
    z = torch.randn(3, 32)
    with torch.no_grad():
        ref = G(z, psi=0.7)
        for opts in [InferenceOptions(), InferenceOptions(channels_last=True), InferenceOptions(fused_modconv=False),
                     InferenceOptions(fast_ops=False), InferenceOptions(tf32=True)]:
            out = FastGenerator(tiny_generator(), opts)(z, psi=0.7)
            assert torch.allclose(out, ref, atol=1e-5), opts


def test_config_f_sizes():
    cfg = nw.config_f(1024)
    assert cfg["synthesis_kwargs"]["channel_base"] == 32768 and cfg["mapping_kwargs"]["num_layers"] == 8
    assert nw.config_f(256)["synthesis_kwargs"]["channel_base"] == 16384
    G = Generator(**nw.config_f(256))
    assert G.num_ws == 14
    channels = {r: getattr(G.synthesis, f"b{r}").conv1.weight.shape[0] for r in G.synthesis.block_resolutions}
    assert channels == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}


# ----------------------------------------------------------------------------------------------------------
# CUDA-only fast paths (skip without CUDA)


@cuda
def test_cuda_fp32_tf32_fp16_channels_last_against_reference():
    G = tiny_generator(res=32, num_fp16_res=2, conv_clamp=256).cuda()
    z = torch.randn(4, 32, device="cuda")
    with torch.no_grad():
        ref = FastGenerator(G, InferenceOptions())(z)  # TF32 pinned off
        cpu = tiny_generator(res=32, num_fp16_res=2, conv_clamp=256)(z.cpu())
        assert (ref.cpu() - cpu).abs().max() < 1e-3
        tf32 = FastGenerator(tiny_generator(res=32, num_fp16_res=2, conv_clamp=256).cuda(),
                             InferenceOptions(tf32=True))(z)
        assert (tf32 - ref).abs().max() < 5e-2
        half = FastGenerator(tiny_generator(res=32, num_fp16_res=2, conv_clamp=256).cuda(),
                             InferenceOptions(fp16=True, channels_last=True))(z)
        assert half.dtype == torch.float32 and (half - ref).abs().max() < 5e-2


@cuda
def test_cuda_graph_batch1_replays_the_eager_result():
    G = tiny_generator().cuda()
    runner = FastGenerator(G, InferenceOptions(cuda_graph=True))
    # The runner pins TF32 off; so must the eager reference (PyTorch allows TF32 in cuDNN convolutions by default).
    with torch.no_grad(), tf32_mode(False):
        for seed in range(3):
            ws = G.mapping(torch.randn(1, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)))
            eager = G.synthesis(ws, "const", fused_modconv=None)
            assert torch.allclose(runner.synthesis(ws, "const"), eager, atol=1e-5)
    assert len(runner._graphs) == 1


@cuda
def test_cuda_compile_matches_eager():
    G = tiny_generator().cuda()
    ws = G.mapping(torch.randn(2, 32, device="cuda")).detach()
    with torch.no_grad(), tf32_mode(False):  # as the runner: TF32 off on both sides
        eager = G.synthesis(ws)
        compiled = FastGenerator(tiny_generator().cuda(), InferenceOptions(compile=True)).synthesis(ws)
    assert torch.allclose(compiled, eager, atol=1e-4)


@pytest.mark.slow
def test_cpu_compile_matches_eager():
    G = tiny_generator()
    ws = G.mapping(torch.randn(2, 32)).detach()
    with torch.no_grad():
        compiled = FastGenerator(tiny_generator(), InferenceOptions(compile=True)).synthesis(ws)
        assert torch.allclose(compiled, G.synthesis(ws), atol=1e-4)
