"""`stylerig generate`: NVIDIA's seed -> z convention, PNG + W+ outputs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import PIL.Image
import pytest
import torch
from test_stylegan2_loaders import tiny_generator

from stylerig_engine.cli import build_parser, main
from stylerig_engine.stylegan2.commands import parse_seeds, seed_to_z
from stylerig_engine.stylegan2.weights import save_generator


def test_seed_syntax_is_nvidias():
    assert parse_seeds("0-7") == list(range(8))
    assert parse_seeds("1,3,5") == [1, 3, 5]
    assert parse_seeds("0-2,10") == [0, 1, 2, 10]
    for bad in ["a", "3-1", "1,,2", "-1", str(2**32)]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seeds(bad)


def test_seed_to_z_is_numpy_randomstate_randn():
    z = seed_to_z(42, 512)
    assert z.shape == (1, 512) and z.dtype == np.float64
    assert np.array_equal(z, np.random.RandomState(42).randn(1, 512))


def test_commands_are_registered():
    help_text = build_parser().format_help()
    assert "weights" in help_text and "generate" in help_text


def test_the_command_line_starts_without_importing_torch():
    """Every subcommand registers without torch (1-3 s to import), so `stylerig --help` and typos answer at once."""
    import subprocess
    import sys

    code = ("import sys; from stylerig_engine.cli import build_parser; build_parser().format_help(); "
            "import stylerig_engine.params, stylerig_engine.rig; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("batch", [1, 3])
def test_generate_writes_pngs_and_wplus_latents(tmp_path, batch):
    G = tiny_generator()
    path = save_generator(G, tmp_path / "g.safetensors")
    out = tmp_path / "out"
    assert main(["generate", "--generator", str(path), "--seeds", "0-2", "--psi", "0.7", "--out", str(out),
                 "--batch", str(batch), "--device", "cpu"]) == 0
    for seed in range(3):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
        with torch.no_grad():
            ws = G.mapping(z, psi=0.7)
            img = G.synthesis(ws, "const")
        saved_ws = np.load(out / f"seed{seed:04d}.npy")
        assert saved_ws.shape == (G.num_ws, G.w_dim) and saved_ws.dtype == np.float32
        assert np.allclose(saved_ws, ws[0].numpy(), atol=1e-6)
        png = np.asarray(PIL.Image.open(out / f"seed{seed:04d}.png"))
        expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()
        assert png.shape == (16, 16, 3)
        assert np.abs(png.astype(int) - expected.astype(int)).max() <= 1
    info = json.loads((out / "generate.json").read_text())
    assert info["seeds"] == [0, 1, 2] and info["psi"] == 0.7


def test_generate_random_noise_is_reproducible_per_seed(tmp_path):
    path = save_generator(tiny_generator(), tmp_path / "g.safetensors")
    for run in ("a", "b"):
        assert main(["generate", "--generator", str(path), "--seeds", "5", "--noise-mode", "random",
                     "--out", str(tmp_path / run), "--device", "cpu"]) == 0
    a = np.asarray(PIL.Image.open(tmp_path / "a" / "seed0005.png"))
    b = np.asarray(PIL.Image.open(tmp_path / "b" / "seed0005.png"))
    assert np.array_equal(a, b)


def test_generate_reports_bad_generators(tmp_path, capsys):
    assert main(["generate", "--generator", "nope", "--seeds", "0", "--out", str(tmp_path)]) == 1
    assert "nope" in capsys.readouterr().err
