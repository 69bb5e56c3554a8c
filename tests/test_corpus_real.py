"""The corpus writer with the engine's real generators: StyleGAN2 (load_generator) and the synthetic world."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_corpus import all_arrays

from stylerig_engine.corpus import (
    Corpus,
    CorpusConfig,
    build_corpus,
    resolve_generator,
    sample_seeds,
)


def test_stylegan2_corpus_matches_nvidia_seeds(tmp_path):
    spec = "random:32:256"  # NVIDIA's architecture at 32x32 with few channels, random weights
    config = CorpusConfig(generator=spec, count=5, size=16, psi=0.5, mixing=2, shard_size=3, landmarks="none")
    report = build_corpus(config, tmp_path, device="cpu", batch=2, progress=False)  # resolved from the spec
    assert report.samples_written == 5
    a = all_arrays(tmp_path)
    G = resolve_generator(spec)
    assert a["ws"].shape == (5, G.num_ws, 512) and "landmarks" not in a
    unmixed = [i for i in range(5) if not a["mixing"][i].any()]
    assert unmixed, "expected some unmixed samples"
    with torch.no_grad():
        for i in unmixed:  # sample i is NVIDIA's image for seed_i: z = RandomState(seed_i).randn(1, z_dim)
            z = torch.from_numpy(np.random.RandomState(sample_seeds(0, i, i + 1)[0]).randn(1, G.z_dim))
            ws = G.mapping(z, psi=0.5)
            np.testing.assert_allclose(a["ws"][i], ws[0].numpy(), atol=1e-5)
            img = G.synthesis(ws, noise_mode="const")
            box = img.reshape(1, 3, 16, 2, 16, 2).mean((3, 5))
            want = (box * 127.5 + 128).clamp(0, 255).floor()[0].permute(1, 2, 0).numpy()
            assert np.abs(a["images"][i].astype(float) - want).max() <= 1
    assert len(Corpus(tmp_path, verify=True)) == 5


def synthetic_generator(resolution: int):
    """The synthetic world through load_generator("synthetic:RES")."""
    spec = f"synthetic:{resolution}"
    return spec, resolve_generator(spec)


@pytest.mark.slow
def test_synthetic_world_corpus_has_exact_landmarks(tmp_path):
    spec, gen = synthetic_generator(64)
    config = CorpusConfig(generator=spec, count=4, size=32, psi=0.7, mixing=1, shard_size=4, landmarks="exact")
    build_corpus(config, tmp_path, generator=gen, device="cpu", batch=4, progress=False)
    a = all_arrays(tmp_path)
    ws = torch.from_numpy(a["ws"])
    with torch.no_grad():
        lm = gen.landmarks(ws).numpy()
    np.testing.assert_allclose(a["landmarks"], (lm + 0.5) / 2 - 0.5, atol=1e-3)
    assert (a["landmarks"] > 0).all() and (a["landmarks"] < 31).all()
    assert a["images"].shape == (4, 32, 32, 3) and a["images"].std() > 10
