import json
import math

import numpy as np
import pytest
import torch

from stylerig_engine.params import CONTROL_MODES, ParamError, ParamLayout, rotation_matrix


class _TinyModel:
    num_identity, num_albedo, num_expression = 4, 2, 3
    albedo_names = ["tone", "redness"]
    expression_names = ["jawOpen", "eyeBlink_L", "eyeBlink_R"]
    expression_prior = "blendshape"


@pytest.fixture
def layout() -> ParamLayout:
    from stylerig_engine.params import layout_for_model

    return layout_for_model(_TinyModel())


def test_blocks_are_contiguous_and_named(layout):
    assert [n for n, _ in layout.sizes] == ["identity", "albedo", "expression", "rotation", "translation",
                                            "illumination"]
    assert layout.dim == 4 + 2 + 3 + 3 + 3 + 27
    assert layout.slice("expression") == slice(6, 9)
    assert layout.names[layout.slice("expression")][0] == "expression/jawOpen"
    assert layout.names[layout.slice("rotation")] == ("rotation/pitch", "rotation/yaw", "rotation/roll")
    assert layout.names[layout.slice("illumination")][:4] == ("illumination/L00_r", "illumination/L00_g",
                                                               "illumination/L00_b", "illumination/L1m1_r")
    with pytest.raises(ParamError, match="unknown parameter block 'pose'"):
        layout.slice("pose")


def test_control_modes_cover_the_paper_and_identity_albedo():
    assert set(CONTROL_MODES) == {"pose", "expression", "illumination", "identity", "albedo"}
    assert CONTROL_MODES["illumination"] == ("illumination",)


def test_split_join_replace_roundtrip(layout):
    rng = np.random.default_rng(0)
    p, q = layout.sample(2, rng)
    parts = layout.split(p)
    assert np.array_equal(layout.join(parts), p)
    r = layout.replace(p, q, CONTROL_MODES["pose"])
    assert np.array_equal(r[layout.slice("rotation")], q[layout.slice("rotation")])
    assert np.array_equal(r[layout.slice("expression")], p[layout.slice("expression")])
    # torch and differentiable
    pt, qt = torch.tensor(p, requires_grad=True), torch.tensor(q, requires_grad=True)
    layout.replace(pt, qt, ["expression"]).sum().backward()
    assert qt.grad[layout.slice("expression")].eq(1).all() and qt.grad[layout.slice("rotation")].eq(0).all()


def test_json_roundtrip_and_errors(layout):
    p = layout.sample(1, np.random.default_rng(1))[0]
    text = layout.dumps(p)
    assert json.loads(text)["expression"]["jawOpen"] == pytest.approx(float(p[6]))
    assert np.allclose(layout.loads(text), p)
    assert layout.from_dict({"rotation": {"yaw": 0.5}})[layout.slice("rotation")][1] == pytest.approx(0.5)
    with pytest.raises(ParamError, match="expression/jawopen"):
        layout.from_dict({"expression": {"jawopen": 1.0}})
    with pytest.raises(ParamError, match="not finite"):
        layout.from_dict({"rotation": {"yaw": float("nan")}})
    with pytest.raises(ParamError, match="layout expects"):
        layout.to_dict(np.zeros(3))


def test_priors_sample_and_clamp(layout):
    p = layout.sample(20000, np.random.default_rng(2))
    e = p[:, layout.slice("expression")]
    assert e.min() >= 0 and e.max() <= 1
    yaw = np.degrees(p[:, layout.slice("rotation")][:, 1])
    assert 17 < yaw.std() < 23
    assert abs(p[:, layout.offset("illumination")].mean() - 0.85) < 0.01
    d = layout.describe()
    again = ParamLayout.from_description(json.loads(json.dumps(d)))
    assert again.names == layout.names and np.allclose(again.prior_std, layout.prior_std)


def test_rotation_convention():
    nose = torch.tensor([0.0, 0.0, 1.0])
    deg = math.radians
    # positive yaw turns the nose towards +X, positive pitch tips it down
    assert torch.allclose(rotation_matrix(torch.tensor([0.0, deg(90), 0.0])) @ nose, torch.tensor([1.0, 0, 0]),
                          atol=1e-6)
    assert torch.allclose(rotation_matrix(torch.tensor([deg(90), 0.0, 0.0])) @ nose, torch.tensor([0.0, -1, 0]),
                          atol=1e-6)
    r = rotation_matrix(torch.randn(5, 3))
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3).expand(5, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(5), atol=1e-5)


def test_the_code_passes_the_linter():
    """The project's ruff configuration holds for the whole tree (configuration in pyproject.toml)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([ruff, "check", "--quiet", "."], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
