"""DFR and RigNet: networks, checkpoints, losses at the truth, training determinism, resume, DDP, evaluation."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stylerig_engine import facemodel
from stylerig_engine.params import CONTROL_MODES, layout_for_model
from stylerig_engine.rig import DFR, CheckpointError, Rig, RigNet, default_layers, load_network, save_network


@pytest.fixture(scope="module")
def model():
    return facemodel.load_default_model()


@pytest.fixture(scope="module")
def layout(model):
    return layout_for_model(model)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, model):
    """A small synthetic corpus at 32 px with exact landmarks."""
    from stylerig_engine.corpus import CorpusConfig, build_corpus
    from stylerig_engine.synthetic import SyntheticGenerator

    out = tmp_path_factory.mktemp("corpus")
    G = SyntheticGenerator(model, resolution=32)
    build_corpus(CorpusConfig(generator="synthetic:32", count=48, size=32, psi=0.8, shard_size=24), out,
                 generator=G)
    return out, G


def test_default_layers_per_mode():
    assert default_layers("pose", 14) == (0, 1, 2, 3, 4)
    assert default_layers("illumination", 14)[-1] == 13
    assert default_layers("pose", 18)[0] == 0 and max(default_layers("illumination", 18)) == 17
    with pytest.raises(ValueError, match="unknown control mode"):
        default_layers("hair", 14)


def test_rignet_starts_as_identity_and_only_touches_its_layers(layout):
    net = RigNet("pose", layout, num_ws=14, w_dim=512)
    ws = torch.randn(3, 14, 512)
    target = torch.as_tensor(layout.sample(3, __import__("numpy").random.default_rng(0)))
    assert torch.equal(net(ws, target), ws)  # zero-initialised output layer
    torch.nn.init.normal_(net.decoder_out.weight, std=0.1)
    d = net(ws, target) - ws
    changed = d.abs().sum((0, 2)) > 0
    assert changed.nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    # only the controlled block of the target matters
    other = target.clone()
    other[:, layout.slice("expression")] += 1.0
    assert torch.equal(net(ws, other), net(ws, target))
    with pytest.raises(ValueError, match="ws: expected shape"):
        net(torch.randn(3, 12, 512), target)


@pytest.mark.parametrize("layer_code", [0, 16])
def test_dfr_starts_at_the_prior_mean_and_roundtrips(layout, layer_code, tmp_path):
    dfr = DFR(layout, num_ws=14, w_dim=512, layer_code=layer_code)
    ws = torch.randn(2, 14, 512)
    assert torch.allclose(dfr(ws), torch.as_tensor(layout.prior_mean).expand(2, -1))
    torch.nn.init.normal_(dfr.net[-1].weight, std=0.01)
    save_network(dfr, tmp_path / "dfr.safetensors")
    again = load_network(tmp_path / "dfr.safetensors")
    assert again.layer_code == layer_code and (again.encoder is None) == (layer_code == 0)
    assert torch.allclose(again(ws), dfr(ws), atol=1e-6)
    # the per-layer code reads every W+ layer on its own: changing one layer changes the output
    assert not torch.allclose(dfr(ws), dfr(ws.index_fill(1, torch.tensor([13]), 0.0)))


def test_dfr_refuses_a_negative_layer_code(layout):
    with pytest.raises(ValueError, match="layer_code must be >= 0"):
        DFR(layout, num_ws=14, w_dim=512, layer_code=-1)


def test_checkpoint_roundtrip_and_errors(layout, tmp_path):
    net = RigNet("illumination", layout, num_ws=14, w_dim=512, layers=(9, 10))
    torch.nn.init.normal_(net.decoder_out.weight)
    save_network(net, tmp_path / "r.safetensors")
    again = load_network(tmp_path / "r.safetensors")
    assert isinstance(again, RigNet) and again.mode == "illumination" and again.layers == (9, 10)
    ws, p = torch.randn(2, 14, 512), torch.randn(2, layout.dim)
    assert torch.allclose(again(ws, p), net(ws, p))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_network(tmp_path / "junk.safetensors")


def test_rig_composes_modes_in_order(layout):
    dfr = DFR(layout, num_ws=14, w_dim=512)
    nets = {m: RigNet(m, layout, num_ws=14, w_dim=512) for m in ("illumination", "pose")}
    for n in nets.values():
        torch.nn.init.normal_(n.decoder_out.weight, std=0.05)
    rig = Rig(dfr, nets, corrections={})  # RigNets alone: the composition itself
    assert rig.modes == ["pose", "illumination"]
    ws, p = torch.randn(2, 14, 512), torch.randn(2, layout.dim)
    expected = nets["illumination"](nets["pose"](ws, p), p)
    assert torch.allclose(rig.edit_many(ws, {"illumination": p, "pose": p}), expected)
    # with DFR's pose corrections the composition is run again with the corrected pose command, light unchanged
    corrected = Rig(dfr, nets, corrections={"pose": 1})
    first = nets["illumination"](nets["pose"](ws, p), p)
    command = p.clone()
    cols = layout.slice("rotation")  # the pose's corrected block (CORRECTED_BLOCKS): translation keeps its command
    command[:, cols] += (p - dfr(first))[:, cols]
    assert torch.allclose(corrected.edit_many(ws, {"illumination": p, "pose": p}),
                          nets["illumination"](nets["pose"](ws, command), p), atol=1e-5)
    with pytest.raises(KeyError, match="no RigNet for mode 'expression'"):
        rig.edit(ws, "expression", p)


def test_losses_vanish_at_the_true_parameters(corpus, model, layout):
    """Self-supervision is consistent with the world: rendering the true parameters reproduces I_w."""
    from stylerig_engine.corpus import Corpus
    from stylerig_engine.render.face import FaceRenderer
    from stylerig_engine.rig.losses import FaceLoss, region_model
    from stylerig_engine.rig.train import load_batch

    root, G = corpus
    c = Corpus(root)
    ws, images, landmarks = load_batch(c, list(range(8)), "cpu")
    loss = FaceLoss(FaceRenderer(region_model(model), layout, image_size=32))
    p = G.true_params(ws)
    at_truth = loss.data_terms(p, images, landmarks)
    wrong = p.clone()
    wrong[:, layout.slice("rotation")] += 0.15
    wrong[:, layout.slice("illumination")] *= 0.7
    off = loss.data_terms(wrong, images, landmarks)
    assert at_truth["landmark"].max() < 1e-6  # stored landmarks are exact (float32 rounding only)
    assert at_truth["photometric"].max() < 0.02  # uint8 quantisation of the stored images only
    assert (off["photometric"] > 5 * at_truth["photometric"]).all()
    assert (off["landmark"] > 1e-4).all()


def test_training_is_deterministic_resumable_and_learns(corpus, tmp_path):
    from stylerig_engine.rig.train import TrainConfig, train

    root, _ = corpus
    # constant lr: the cosine schedule depends on the total steps, which this test changes on resume
    common = dict(net="dfr", corpus=str(root), batch=8, lr=3e-3, log_every=1, hidden=64, lr_schedule="constant")
    full = train(TrainConfig(out=str(tmp_path / "a"), steps=6, **common), progress=False)
    first = train(TrainConfig(out=str(tmp_path / "b"), steps=3, checkpoint_every=3, **common), progress=False)
    resumed = train(TrainConfig(out=str(tmp_path / "b"), steps=6, **common), progress=False, resume=True)
    assert first == resumed
    a, b = load_network(full), load_network(resumed)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name
    log = [json.loads(line) for line in (tmp_path / "a" / "dfr.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    # it learns: on a fixed batch, the trained DFR's landmark error is below the untrained one's (prior mean)
    from stylerig_engine.corpus import Corpus
    from stylerig_engine.render.face import FaceRenderer
    from stylerig_engine.rig.losses import FaceLoss, region_model
    from stylerig_engine.rig.train import load_batch

    ws, images, landmarks = load_batch(Corpus(root), list(range(48)), "cpu")
    loss = FaceLoss(FaceRenderer(region_model(corpus[1].model), a.layout, image_size=32))
    before = loss.data_terms(DFR(a.layout, num_ws=14, w_dim=512)(ws), images, landmarks, photometric=False)
    with torch.no_grad():
        after = loss.data_terms(a(ws), images, landmarks, photometric=False)
    assert after["landmark"].mean() < 0.8 * before["landmark"].mean()
    config = json.loads((tmp_path / "a" / "dfr.config.json").read_text())
    assert config["steps"] == 6 and config["net"] == "dfr"
    with pytest.raises(FileExistsError, match="--resume"):
        train(TrainConfig(out=str(tmp_path / "a"), steps=6, **common), progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        train(TrainConfig(out=str(tmp_path / "b"), steps=8, **{**common, "lr": 1e-2}), progress=False, resume=True)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from stylerig_engine.rig.train import TrainConfig

    cfg = TrainConfig(net="dfr", corpus="c", out="o", steps=1000, lr=1e-3, warmup=0.02)
    lrs = [cfg.learning_rate(s) for s in range(1000)]
    assert lrs[0] == pytest.approx(1e-3 / 20) and lrs[19] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[19:], lrs[20:]))  # non-increasing after the warm-up
    assert lrs[20 + 490] == pytest.approx(5e-4) and lrs[-1] < 1e-8
    assert TrainConfig(net="dfr", corpus="c", out="o", lr_schedule="constant").learning_rate(7) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(net="dfr", corpus="c", out="o", lr_schedule="step")


def test_observable_errors_measure_geometry_and_shading(model, layout):
    from stylerig_engine.render.shading import sh_directional
    from stylerig_engine.rig.evaluate import ObservableErrors

    errors = ObservableErrors(model, layout)
    p = torch.as_tensor(layout.prior_mean, dtype=torch.float32).repeat(4, 1)
    p[:, layout.slice("illumination")] = sh_directional((0.3, 0.4, 1.0), intensity=0.6, ambient=0.5)
    q = p.clone()
    k = list(model.expression_names).index("jawOpen")
    q[1, layout.slice("expression").start + k] += 0.5
    q[2, layout.slice("illumination").start:layout.slice("illumination").start + 3] *= 1.2  # ambient 20 % up
    q[3, layout.slice("illumination")] = sh_directional((-0.5, 0.4, 1.0), intensity=0.9, ambient=0.5)
    out = errors(q, p)
    assert out["expression_mm"][0] == 0 and out["shading"][0] == 0
    # the light's direction: unchanged by the ambient, and the angle between the suns when one is moved
    a, b = np.array([0.3, 0.4, 1.0]), np.array([-0.5, 0.4, 1.0])
    moved = np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    assert out["light_direction_deg"].tolist()[:3] == pytest.approx([0, 0, 0], abs=1e-3)
    assert float(out["light_direction_deg"][3]) == pytest.approx(moved, abs=1e-3) and out["shading"][3] > 0.1
    skin = model.regions["face_skin"]
    jaw = np.linalg.norm(model.expression_basis[k][skin], axis=-1)
    assert float(out["expression_mm"][1]) == pytest.approx(10 * 0.5 * np.sqrt((jaw ** 2).mean()), rel=1e-4)
    assert out["shading"][1] == 0 and out["expression_mm"][2] == 0
    # gamma_0 up 20 % adds 0.2 gamma_0 to the irradiance of every normal: relative to the mean irradiance
    from stylerig_engine.render.shading import sh_coefficients, sh_shade

    sh = sh_coefficients(p[:1, layout.slice("illumination")].double())
    mean = sh_shade(errors.normals[None], sh[:, None]).mean()
    assert float(out["shading"][2]) == pytest.approx(float(0.2 * sh[0, 0, 0] / mean), rel=1e-4)


def test_rignet_training_step_and_evaluation(corpus, tmp_path):
    from stylerig_engine.rig import load_rig
    from stylerig_engine.rig.evaluate import evaluate, format_table
    from stylerig_engine.rig.train import TrainConfig, train

    root, G = corpus
    dfr = train(TrainConfig(net="dfr", corpus=str(root), out=str(tmp_path), steps=2, batch=8, hidden=64),
                progress=False)
    train(TrainConfig(net="rignet", mode="expression", dfr=str(dfr), corpus=str(root), out=str(tmp_path), steps=2,
                      batch=8, hidden=64, log_every=1), progress=False)
    log = [json.loads(x) for x in (tmp_path / "rignet-expression.log.jsonl").read_text().splitlines()]
    assert {"rec", "edit_photometric", "edit_landmark", "consist_photometric", "consist_landmark"} <= set(log[0])
    rig = load_rig(tmp_path)
    assert rig.modes == ["expression"]
    report = evaluate(rig, G, count=8, psi=0.8, batch=8)
    rows = report["modes"]["expression"]
    assert rows["no_edit"]["drift_mean"] == 0.0 and rows["no_edit"]["outside_face_change"] == 0.0
    assert rows["naive"]["drift_mean"] > 0.05  # copying the middle layers disturbs other blocks
    assert "rotation" in report["dfr"] and report["estimate"].startswith("exact")
    assert set(report["dfr_observable"]) == {"expression_mm", "shading", "light_direction_deg"}
    assert rows["no_edit"]["control_observable"]["expression_mm"]["median"] > 0
    assert "expression" in format_table(report)


def test_two_process_data_parallel_equals_one_process(corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo) and the same global batch follows the single-process run."""
    root, _ = corpus
    script = (
        "import sys; from stylerig_engine.rig.train import TrainConfig, train; "
        "train(TrainConfig(net='dfr', corpus=sys.argv[1], out=sys.argv[2], steps=3, batch=8, hidden=64, "
        "lr=3e-3), progress=False)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script, str(root), str(tmp_path / "one")], check=True, env=env)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    "--no-python", sys.executable, "-c", script, str(root), str(tmp_path / "two")],
                   check=True, env=env, capture_output=True)
    a, b = load_network(tmp_path / "one" / "dfr.safetensors"), load_network(tmp_path / "two" / "dfr.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-4, rtol=1e-3), name
    assert Path(tmp_path / "two" / "dfr.config.json").exists()


def test_engine_serves_a_rig_directory(layout, tmp_path):
    """`stylerig serve --rignet DIR` loads DFR + RigNets through the engine's hook."""
    from stylerig_engine.engine import NotAvailable, load_rig

    dfr = DFR(layout, num_ws=14, w_dim=512)
    save_network(dfr, tmp_path / "dfr.safetensors")
    net = RigNet("pose", layout, num_ws=14, w_dim=512)
    torch.nn.init.normal_(net.decoder_out.weight, std=0.05)
    save_network(net, tmp_path / "rignet-pose.safetensors")
    fit, edit = load_rig(tmp_path)
    ws = torch.randn(2, 14, 512)
    assert torch.allclose(fit(ws), dfr(ws))
    assert edit.modes == ["pose"]
    target = torch.randn(2, layout.dim)
    # the engine edits with the rig's live path: RigNet, then DFR's corrections of the pose
    assert torch.allclose(edit.rig.edit(ws, "pose", target, corrections={}), net(ws, target), atol=1e-6)
    assert torch.equal(edit(ws, {"pose": target}), edit.rig.edit_many(ws, {"pose": target}))
    assert not torch.allclose(edit(ws, {"pose": target}), net(ws, target), atol=1e-3)
    with pytest.raises(NotAvailable, match="no dfr.safetensors"):
        load_rig(tmp_path / "missing")


def test_shipped_rig_reproduces_its_evaluation():
    """The committed checkpoints are the ones their evaluation.json describes: the same metrics on the first
    64 of the same held-out latents land close to the report's, and every RigNet keeps other blocks better
    than copying its layers does."""
    from stylerig_engine.rig import SHIPPED_RIG, load_rig
    from stylerig_engine.rig.evaluate import evaluate
    from stylerig_engine.synthetic import make_synthetic

    claimed = json.loads((SHIPPED_RIG / "evaluation.json").read_text())
    rig = load_rig(SHIPPED_RIG)
    assert sorted(rig.modes) == sorted(claimed["modes"])
    report = evaluate(rig, make_synthetic(claimed["training"]["generator"]), count=64, psi=claimed["psi"],
                      seed=claimed["seed"], image_metrics=False)
    for block, row in report["dfr"].items():
        assert row["mean"] == pytest.approx(claimed["dfr"][block]["mean"], rel=0.25), block
    for mode, rows in report["modes"].items():
        assert set(rows) == set(claimed["modes"][mode]), mode  # a "live" row where the rig corrects the mode
        for name in set(rows) & {"rignet", "live"}:
            for block, row in rows[name]["control"].items():
                assert row["mean"] == pytest.approx(claimed["modes"][mode][name]["control"][block]["mean"],
                                                    rel=0.25), (mode, name, block)
            claimed_seen = claimed["modes"][mode][name].get("control_observable", {})
            assert set(rows[name].get("control_observable", {})) == set(claimed_seen), (mode, name)
            for key, row in claimed_seen.items():  # geometry in mm, shading, the light's direction
                assert rows[name]["control_observable"][key]["median"] == pytest.approx(row["median"], rel=0.25), key
        if mode == "pose":  # DFR's corrections bring the pose closer than RigNet alone (3.1° -> 1.7° on 256 faces)
            live, alone = (rows[n]["control"]["rotation"]["median"] for n in ("live", "rignet"))
            assert live < 0.75 * alone
        assert rows["rignet"]["drift_mean"] < rows["naive"]["drift_mean"]
        assert rows["rignet"]["control"][CONTROL_MODES[mode][0]]["mean"] <= rows["no_edit"]["control"][
            CONTROL_MODES[mode][0]]["mean"]
    # the animator's view: each keyed expression shows the share of its change the report claims, and the head
    # follows a yaw sweep as closely as claimed
    animator, claimed_animator = report["animator"], claimed["animator"]
    assert set(animator["keys"]) == set(claimed_animator["keys"])
    for key, row in animator["keys"].items():
        assert row["value"] == pytest.approx(claimed_animator["keys"][key]["value"], abs=0.05), key
        assert row["median"] == pytest.approx(claimed_animator["keys"][key]["median"], abs=0.15), key
    for stat in ("median", "rignet_alone_median"):
        assert animator["yaw_sweep"][stat] == pytest.approx(claimed_animator["yaw_sweep"][stat], rel=0.25), stat
    corr = report["reader"]["expression_correlation"]
    for name, r in claimed["reader"]["expression_correlation"].items():
        assert corr[name] == pytest.approx(r, abs=0.03), name


def test_train_all_runs_the_whole_pipeline_and_ships(tmp_path):
    """`stylerig train all`: corpus -> DFR -> RigNet -> evaluation.json -> float16 copy that loads as a rig."""
    from stylerig_engine.cli import main
    from stylerig_engine.rig import load_rig

    run, ship = tmp_path / "run", tmp_path / "ship"
    assert main(["train", "all", "--generator", "synthetic:32", "--count", "32", "--batch", "8", "--dfr-steps", "2",
                 "--distill-steps", "2", "--rignet-steps", "2", "--modes", "pose", "--eval-count", "8",
                 "--layer-code", "8", "--reg", "3e-4", "--distill-hidden", "48", "--distill-batch", "16",
                 "--out", str(run), "--ship", str(ship)]) == 0
    report = json.loads((ship / "evaluation.json").read_text())
    # two DFR stages: self-supervised, then a fresh, wider DFR regressed on landmark fits started from the first
    first = json.loads((run / "dfr-self-supervised" / "dfr.config.json").read_text())
    second = json.loads((run / "dfr.config.json").read_text())
    assert (first["distill"], first["steps"], second["steps"]) == (0.0, 2, 2)
    assert second["teacher"] == str(run / "dfr-self-supervised" / "dfr.safetensors") and second["init"] is None
    assert (second["render"], second["hidden"], second["batch"], first["hidden"]) == (False, 48, 16, 256)
    assert json.loads((run / "rignet-pose.config.json").read_text())["key_edits"] == 0.5  # pose's default
    assert (run / "dfr.fit-targets.safetensors").is_file() and report["training"]["distill_steps"] == 2
    assert set(report["animator"]["yaw_sweep"]["per_yaw_median"]) == {"-30", "-20", "-10", "+0", "+10", "+20", "+30"}
    assert report["training"]["layer_code"] == 8 and report["training"]["lr_schedule"] == "cosine"
    dfr_config = json.loads((ship / "dfr.config.json").read_text())
    assert dfr_config["layer_code"] == 8
    assert {dfr_config["loss"][k] for k in ("identity_reg", "albedo_reg", "expression_reg")} == {3e-4}
    assert report["training"]["loss"] == dfr_config["loss"]
    rig = load_rig(ship)
    assert rig.modes == ["pose"] and rig.dfr.layer_code == 8 and rig.dfr.net[0].out_features == 48
    assert rig.dfr.net[0].weight.dtype == torch.float32  # shipped in float16, loaded as float32
    assert report["modes"]["pose"]["no_edit"]["drift_mean"] == 0.0


def test_train_all_ends_with_the_consistency_ramp_and_the_light_stage(tmp_path, capsys):
    """The shipped recipe's last stages: the illumination RigNet fine-tuned at α_pc 10, 30, 100, 200 in turn, each
    stage starting from the last; then DFR's light calibrated on photometric fits and the RigNet fine-tuned once more
    through it; the rig (evaluated, shipped) is that DFR with that RigNet."""
    from stylerig_engine.cli import main
    from stylerig_engine.rig import load_rig
    from stylerig_engine.rig.checkpoints import read_description
    from stylerig_engine.rig.commands import CONSISTENCY_RAMP, RAMP_LR

    run, ship = tmp_path / "run", tmp_path / "ship"
    assert main(["train", "all", "--generator", "synthetic:32", "--count", "16", "--batch", "8", "--dfr-steps", "1",
                 "--distill-steps", "0", "--rignet-steps", "1", "--modes", "illumination",
                 "--eval-count", "4", "--layer-code", "8", "--rignet-loss", "edit_focus=3", "--light-calibration", "2",
                 "--out", str(run), "--ship", str(ship)]) == 0
    alphas = CONSISTENCY_RAMP["illumination"]
    assert alphas == (10.0, 30.0, 100.0, 200.0)
    previous = run / "rignet-illumination.safetensors"
    for alpha in alphas:
        stage = run / "consistency-ramp" / f"illumination-{alpha:g}"
        config = json.loads((stage / "rignet-illumination.config.json").read_text())
        assert (config["init"], config["lr"], config["steps"]) == (str(previous), RAMP_LR, 1)
        assert config["rignet_loss"]["parameter_consistency"] == alpha
        assert config["rignet_loss"]["edit_focus"] == 3  # the run's own --rignet-loss is kept
        previous = stage / "rignet-illumination.safetensors"
    light = run / "light-calibration"
    config = json.loads((light / "rignet-illumination.config.json").read_text())
    assert (config["init"], config["dfr"], config["lr"], config["steps"]) == (
        str(previous), str(light / "dfr.safetensors"), RAMP_LR, 1)
    assert config["rignet_loss"]["parameter_consistency"] == alphas[-1]
    assert read_description(light / "dfr.safetensors")["extra"]["light_calibration"]["faces"] == 4  # 2 + 2 edited
    rig = load_rig(run / "rig")
    last = load_network(light / "rignet-illumination.safetensors").state_dict()
    assert all(torch.equal(v, last[k]) for k, v in rig.rignets["illumination"].state_dict().items())
    before, after = load_network(run / "dfr.safetensors"), rig.dfr
    assert torch.equal(after.net[0].weight, before.net[0].weight)  # the same network, its light head re-read
    assert not torch.equal(after.net[-1].weight[after.layout.slice("illumination")],
                           before.net[-1].weight[before.layout.slice("illumination")])
    report = json.loads((ship / "evaluation.json").read_text())
    assert report["training"]["light_calibration"] == 2
    assert report["training"]["consistency_ramp"] == {"illumination": list(alphas)}
    assert json.loads((ship / "rignet-illumination.config.json").read_text())["rignet_loss"][
        "parameter_consistency"] == 200.0
    assert load_rig(ship).modes == ["illumination"]
    assert main(["train", "all", "--out", str(tmp_path / "bad"), "--ramp-steps", "-1"]) == 2  # before any work
    assert "--ramp-steps must be >= 0" in capsys.readouterr().err and not (tmp_path / "bad" / "corpus").exists()
    assert main(["train", "all", "--out", str(tmp_path / "bad"), "--light-calibration", "1"]) == 2
    assert "--light-calibration must be 0" in capsys.readouterr().err and not (tmp_path / "bad" / "corpus").exists()
    assert main(["train", "all", "--out", str(tmp_path / "bad"), "--landmarks", "none"]) == 2  # no fits without them
    assert "--light-calibration 0" in capsys.readouterr().err and not (tmp_path / "bad" / "corpus").exists()


def coarse_pixels(device="cpu"):
    """Stand-in identity model for tests: the image pooled to 8 x 8, flattened (no face-recognition weights here)."""
    return lambda images: torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)


def wrong_shape():
    return lambda images: images


def test_identity_similarity_is_reported_per_row():
    from stylerig_engine.rig import load_rig
    from stylerig_engine.rig.evaluate import evaluate, format_table, load_identity_model
    from stylerig_engine.synthetic import make_synthetic

    rig = load_rig()
    rig.rignets = torch.nn.ModuleDict({"pose": rig.rignets["pose"]})
    report = evaluate(rig, make_synthetic("synthetic:64"), count=8, psi=0.8, image_metrics=False,
                      identity_model=load_identity_model("py:test_rig:coarse_pixels"))
    rows = report["modes"]["pose"]
    assert rows["no_edit"]["identity_similarity"]["mean"] == pytest.approx(1.0)
    for name in ("rignet", "naive"):  # a pose edit moves the face: similar, not identical, coarse pixels
        assert 0.3 < rows[name]["identity_similarity"]["mean"] < 0.9999
    assert "identity sim." in format_table(report)
    with pytest.raises(ValueError, match="py:nowhere:model"):
        load_identity_model("py:nowhere:model")
    with pytest.raises(ValueError, match=r"\(B, D\) embeddings"):
        evaluate(rig, make_synthetic("synthetic:64"), count=2, psi=0.8, image_metrics=False,
                 identity_model=load_identity_model("py:test_rig:wrong_shape"))


def test_evaluate_cli_names_a_bad_identity_model(capsys):
    from stylerig_engine.cli import main

    assert main(["evaluate", "--count", "2", "--identity-model", "py:test_rig:missing"]) == 2
    assert "py:test_rig:missing" in capsys.readouterr().err


def _held_out(count):
    from stylerig_engine.rig.evaluate import HELD_OUT_SEED, sample_latents
    from stylerig_engine.synthetic import make_synthetic

    world = make_synthetic("synthetic:64")
    return world, sample_latents(world, count, HELD_OUT_SEED, 0.8)


def test_fitting_reads_an_image_better_than_dfr():
    from stylerig_engine.rig import load_rig
    from stylerig_engine.rig.evaluate import block_errors
    from stylerig_engine.rig.fitting import ImageReader

    rig = load_rig()
    world, w = _held_out(4)
    reader = ImageReader(rig, world, steps=150)
    truth, dfr, fitted = world.true_params(w), rig.fit(w), reader(w)
    images, landmarks = reader.observe(w)
    before, after = (reader.loss.data_terms(p, images, landmarks) for p in (dfr, fitted))
    assert after["photometric"].mean() < 0.5 * before["photometric"].mean()
    assert after["landmark"].mean() < 0.2 * before["landmark"].mean()
    assert block_errors(rig.layout, fitted, truth)["rotation"].mean() < 0.7 * block_errors(
        rig.layout, dfr, truth)["rotation"].mean()


def test_closed_loop_edit_moves_the_pose_closer_than_the_live_edit():
    from stylerig_engine.rig import load_rig
    from stylerig_engine.rig.evaluate import block_errors
    from stylerig_engine.rig.fitting import ImageReader, closed_loop_edit

    rig = load_rig()
    world, w = _held_out(6)
    target = world.true_params(w.roll(1, 0))
    reader = ImageReader(rig, world, steps=150)
    assert torch.equal(closed_loop_edit(rig, reader, w, "pose", target, iterations=0), rig.edit(w, "pose", target))

    def miss(w_hat):
        return block_errors(rig.layout, world.true_params(w_hat), target)["rotation"]

    alone, live = miss(rig.edit(w, "pose", target, corrections={})), miss(rig.edit(w, "pose", target))
    loop = miss(closed_loop_edit(rig, reader, w, "pose", target, iterations=3))
    # RigNet alone misses by 3.8° on average here, the live edit by 1.07°, the closed loop by 0.72°
    assert loop.mean() < 0.3 * alone.mean() and loop.mean() < 0.9 * live.mean()
    assert (loop < live + 1.0).all()  # none grows by more than the sensor's noise


def test_live_edit_corrects_the_pose_and_the_keys_by_dfr():
    from stylerig_engine.rig import load_rig
    from stylerig_engine.rig.editing import KEY_RAMP, LIVE_CORRECTIONS
    from stylerig_engine.rig.evaluate import block_errors, blendshape_index

    rig = load_rig()
    assert rig.corrections == LIVE_CORRECTIONS and LIVE_CORRECTIONS.get("pose", 0) > 0
    world, w = _held_out(32)
    target = world.true_params(w.roll(1, 0))
    raw = rig.rignets["pose"](w, target)
    assert torch.equal(rig.edit(w, "pose", target, corrections={}), raw)
    assert torch.equal(load_rig(corrections={}).edit(w, "pose", target), raw)
    live = rig.edit(w, "pose", target)
    true_alone = block_errors(rig.layout, world.true_params(raw), target)["rotation"]
    true_live = block_errors(rig.layout, world.true_params(live), target)["rotation"]
    assert true_live.median() < 0.7 * true_alone.median()  # 3.1° -> 1.7° on 256 faces (docs/rig.md)
    read_alone = block_errors(rig.layout, rig.fit(raw), target)["rotation"]
    read_live = block_errors(rig.layout, rig.fit(live), target)["rotation"]
    assert read_live.median() < 0.5 * read_alone.median()
    # composed, the pose is corrected as DFR reads the final latent (the expression RigNet moves the head a little)
    both = {"pose": target, "expression": target}
    composed_alone = block_errors(rig.layout, rig.fit(rig.edit_many(w, both, corrections={})), target)["rotation"]
    composed_live = block_errors(rig.layout, rig.fit(rig.edit_many(w, both)), target)["rotation"]
    assert composed_live.median() < 0.5 * composed_alone.median()

    # expression: a whole other face's expression moves many blendshapes, which DFR's corrections leave alone ...
    untouched = rig.key_weights(w, target).sum(1) == 0
    assert untouched.float().mean() > 0.5
    assert torch.equal(rig.edit(w[untouched], "expression", target[untouched]),
                       rig.rignets["expression"](w[untouched], target[untouched]))
    # ... while a key (a pucker at the world's 99th percentile) is corrected and shows (56 -> 98 % on 256 faces)
    start = rig.fit(w)
    pucker = blendshape_index(rig.layout)["mouthPucker"]
    keyed = start.clone()
    keyed[:, pucker] = 0.58
    truth = world.true_params(w)[:, pucker]
    valid = (0.58 - truth).abs() > 0.1

    def shown(w_hat):
        return ((world.true_params(w_hat)[:, pucker] - truth)[valid] / (0.58 - truth)[valid]).median()

    alone = shown(rig.edit(w, "expression", keyed, corrections={}))
    assert shown(rig.edit(w, "expression", keyed)) > max(0.8, alone + 0.2)
    # the key weights ramp in with the keyed change, so an animated key never pops
    weights = rig.key_weights(w, keyed)
    ramp = (((0.58 - start[:, pucker]).abs() - KEY_RAMP[0]) / (KEY_RAMP[1] - KEY_RAMP[0])).clamp(0, 1)
    assert torch.allclose(weights[:, pucker], ramp) and ramp.median() == 1
    assert weights.sum(1).sub(weights[:, pucker]).abs().max() == 0  # nothing but the key
    nudged = start.clone()
    nudged[:, pucker] += 0.05  # at the ramp's foot: no correction
    assert torch.equal(rig.edit(w, "expression", nudged), rig.rignets["expression"](w, nudged))
    with pytest.raises(KeyError, match="no RigNet for mode 'identity'"):
        rig.edit(w, "identity", target)
    with pytest.raises(KeyError, match="unknown control modes"):
        rig.edit_many(w, {"smile": target})


def test_keys_are_found_against_the_rigs_rest():
    """A rig matched with Exact match starts where the face is, not where DFR reads it: the keys are what the
    animator moved from there (the add-on sends that match as `rest`). Here the rest is the face's true parameters,
    a perfect Exact match, which differs from DFR's reading in many blendshapes."""
    from stylerig_engine.rig import load_rig
    from stylerig_engine.rig.evaluate import blendshape_index

    rig = load_rig()
    world, w = _held_out(32)
    truth = world.true_params(w)
    rest = rig.layout.clamp(truth)
    pucker = blendshape_index(rig.layout)["mouthPucker"]
    keyed = rest.clone()
    keyed[:, pucker] = 0.58
    valid = (0.58 - truth[:, pucker]).abs() > 0.1

    def shown(w_hat):
        change = world.true_params(w_hat)[:, pucker] - truth[:, pucker]
        return (change[valid] / (0.58 - truth)[valid, pucker]).median()

    # against DFR's reading the start looks like a whole other expression: nothing is corrected (40 % -> 49 %) ...
    assert rig.key_weights(w, keyed).sum(1).median() == 0
    weights = rig.key_weights(w, keyed, rest)
    assert weights.sum(1).sub(weights[:, pucker]).abs().max() == 0 and weights[:, pucker].median() == 1
    alone = shown(rig.edit(w, "expression", keyed, corrections={}))
    assert shown(rig.edit(w, "expression", keyed, rest=rest)) > max(0.85, alone + 0.3)  # 40 % -> 98 %
    # a rest equal to DFR's reading is the default; unkeyed, the live edit is RigNet's alone
    start = rig.fit(w)
    assert torch.equal(rig.edit(w, "expression", keyed, rest=start), rig.edit(w, "expression", keyed))
    assert torch.equal(rig.edit(w, "expression", rest, rest=rest), rig.rignets["expression"](w, rest))


def test_closed_loop_needs_landmarks_and_known_modes(capsys):
    from stylerig_engine.cli import main
    from stylerig_engine.corpus import CorpusConfigError
    from stylerig_engine.rig import load_rig
    from stylerig_engine.rig.fitting import ImageReader

    from test_corpus_standin import tiny_no_landmarks

    with pytest.raises(CorpusConfigError, match="landmarks"):
        ImageReader(load_rig(), tiny_no_landmarks())
    assert main(["evaluate", "--count", "2", "--closed-loop", "identity"]) == 2
    assert "--closed-loop identity" in capsys.readouterr().err


def test_negative_loss_weights_are_refused():
    from stylerig_engine.rig.losses import LossWeights

    with pytest.raises(ValueError, match="identity_reg"):
        LossWeights.with_reg(-1e-3)
    with pytest.raises(ValueError, match="landmark"):
        LossWeights(landmark=float("nan"))


def test_fine_tuning_starts_from_a_checkpoint_and_refuses_another_kind(corpus, tmp_path):
    from stylerig_engine.rig.train import TrainConfig, train

    root, _ = corpus
    common = dict(net="dfr", corpus=str(root), batch=8, hidden=64, lr_schedule="constant")
    source = train(TrainConfig(out=str(tmp_path / "a"), steps=3, lr=3e-3, **common), progress=False)
    tuned = train(TrainConfig(out=str(tmp_path / "b"), steps=1, lr=1e-9, init=str(source), **common), progress=False)
    fresh = train(TrainConfig(out=str(tmp_path / "c"), steps=1, lr=1e-9, **common), progress=False)
    a, b, c = (load_network(p).state_dict() for p in (source, tuned, fresh))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # the run started from the source's weights
    assert not torch.allclose(a["net.4.weight"], c["net.4.weight"])
    with pytest.raises(ValueError, match="DFR checkpoint cannot start a RigNet"):
        train(TrainConfig(net="rignet", mode="pose", dfr=str(source), init=str(source), corpus=str(root),
                          out=str(tmp_path / "d"), steps=1, batch=8, hidden=64), progress=False)
    with pytest.raises(ValueError, match="shapes differ"):
        train(TrainConfig(out=str(tmp_path / "e"), steps=1, init=str(source), **{**common, "hidden": 32}),
              progress=False)


def test_loss_weights_from_the_command_line():
    from stylerig_engine.rig.commands import parse_loss_weights
    from stylerig_engine.rig.losses import LossWeights

    w = parse_loss_weights("landmark=200, expression_reg=1e-5", LossWeights())
    assert (w.landmark, w.expression_reg, w.identity_reg) == (200.0, 1e-5, LossWeights().identity_reg)
    with pytest.raises(ValueError, match="NAME one of"):
        parse_loss_weights("landmarks=2", LossWeights())
    with pytest.raises(ValueError, match="not a number"):
        parse_loss_weights("landmark=big", LossWeights())


def test_animator_report_measures_the_share_of_a_keyed_change(layout):
    """An edit that changes nothing shows 0 % of every key, and its yaw sweep misses by exactly the angle between
    the face's own rotation and the keyed one; the keys are set to the world's own 99th percentile."""
    from stylerig_engine.rig import load_rig
    from stylerig_engine.rig.evaluate import (ANIMATOR_KEYS, YAW_SWEEP_DEG, animator_report, blendshape_index,
                                              key_values, rotation_error_deg, sample_latents)
    from stylerig_engine.synthetic import make_synthetic

    world = make_synthetic("synthetic:64")
    shipped = load_rig()
    still = Rig(shipped.dfr, {m: RigNet(m, layout, num_ws=14, w_dim=512) for m in ("pose", "expression")}).eval()
    report = animator_report(still, world, count=16, psi=0.8, reference_count=512)
    assert set(report["keys"]) == set(ANIMATOR_KEYS)
    for key, row in report["keys"].items():
        assert row["median"] == 0.0 and row["faces"] > 8, key
        assert row["dfr_read_median"] == 0.0, key  # DFR reads the unedited face exactly as before
    truth = world.true_params(sample_latents(world, 512, 1_000_004, 0.8))
    index = blendshape_index(layout)
    blink = truth[:, [index["eyeBlink_L"], index["eyeBlink_R"]]].numpy()
    assert report["keys"]["blink"]["value"] == pytest.approx(float(np.percentile(blink, 99)), rel=1e-6)
    assert key_values(layout, truth)["blink"] == report["keys"]["blink"]["value"]
    w = sample_latents(world, 16, 1_000_003, 0.8)
    rot = layout.slice("rotation")
    start = shipped.fit(w)
    start[:, rot.start + 1] = np.radians(YAW_SWEEP_DEG[0])
    expected = rotation_error_deg(world.true_params(w)[:, rot], start[:, rot]).median()
    assert report["yaw_sweep"]["per_yaw_median"]["-30"] == pytest.approx(float(expected), rel=1e-5)


def test_reader_report_correlates_each_blendshape_with_the_truth():
    from stylerig_engine.rig.evaluate import reader_report
    from stylerig_engine.synthetic import make_synthetic

    world = make_synthetic("synthetic:64")
    exact = reader_report(world.true_params, world, count=256, psi=0.8)
    assert len(exact["expression_correlation"]) == 20 and exact["min_correlation"] == pytest.approx(1.0)
    assert exact["blocks"]["rotation"]["median"] < 1e-3
    assert {"jawOpen", "eyeBlink_L", "mouthSmile_L"} <= set(exact["expression_correlation"])
    blind = reader_report(lambda ws: world.true_params(ws.roll(1, 0)), world, count=256, psi=0.8)
    assert abs(blind["expression_correlation"]["jawOpen"]) < 0.25  # another face's expression says nothing
    with pytest.raises(ValueError, match="exact parameters"):
        reader_report(world.true_params, object())


def test_landmark_fit_reads_pose_and_expression_without_rendering(layout):
    """From DFR's reading with a neutral expression, a landmark fit moves only the geometry blocks and brings
    rotation and the blendshapes an animator keys most (smile, blink, jaw) much closer to the truth. (The RMSE
    over all 53 blendshapes need not shrink: those the landmarks do not see wander under the weak prior.)"""
    from stylerig_engine.render.face import FaceRenderer
    from stylerig_engine.rig import load_rig
    from stylerig_engine.rig.evaluate import block_errors, blendshape_index, sample_latents
    from stylerig_engine.rig.fitting import GEOMETRY_BLOCKS, fit_landmarks
    from stylerig_engine.rig.losses import region_model
    from stylerig_engine.synthetic import make_synthetic

    world = make_synthetic("synthetic:64")
    w = sample_latents(world, 64, 99, 0.8)
    truth, landmarks = world.true_params(w), world.landmarks(w)
    start = load_rig().fit(w)
    start[:, layout.slice("expression")] = torch.as_tensor(layout.prior_mean[layout.slice("expression")])  # blind
    renderer = FaceRenderer(region_model(world.model), layout, image_size=64)
    fitted = fit_landmarks(renderer, landmarks, start, steps=200)
    kept = ~torch.as_tensor(layout.mask(GEOMETRY_BLOCKS))
    assert torch.equal(fitted[:, kept], start[:, kept])
    before, after = block_errors(layout, start, truth), block_errors(layout, fitted, truth)
    assert after["rotation"].median() < 0.6 * before["rotation"].median()
    index = blendshape_index(layout)
    keyed = [index[n] for n in ("mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "jawOpen")]
    assert (fitted - truth)[:, keyed].abs().mean() < 0.6 * (start - truth)[:, keyed].abs().mean()
    lm_before = (renderer.landmarks(start) - landmarks).norm(dim=-1).mean()
    assert (renderer.landmarks(fitted) - landmarks).norm(dim=-1).mean() < 0.5 * lm_before
    with pytest.raises(ValueError, match="start must be"):
        fit_landmarks(renderer, landmarks, start[:3])


def test_dfr_distillation_caches_its_targets_and_logs_the_term(corpus, tmp_path):
    from safetensors.torch import load_file

    from stylerig_engine.rig.train import TrainConfig, train

    root, _ = corpus
    cfg = dict(net="dfr", corpus=str(root), batch=8, hidden=64, log_every=1, distill=1.0)
    train(TrainConfig(out=str(tmp_path), steps=2, **cfg), progress=False)
    table = tmp_path / "dfr.fit-targets.safetensors"
    targets = load_file(str(table))["targets"]
    assert targets.shape == (48, load_network(tmp_path / "dfr.safetensors").layout.dim)
    log = [json.loads(x) for x in (tmp_path / "dfr.log.jsonl").read_text().splitlines()]
    assert all(r["distill"] > 0 for r in log)
    stamp = table.stat().st_mtime_ns
    train(TrainConfig(out=str(tmp_path), steps=3, **cfg), progress=False, resume=True)
    assert table.stat().st_mtime_ns == stamp  # the resumed run reused the table
    with pytest.raises(ValueError, match="distill"):
        TrainConfig(net="rignet", mode="pose", dfr="x", corpus="c", out="o", distill=1.0)


def test_chunked_tables_resume_at_the_chunks_not_yet_computed(tmp_path):
    from stylerig_engine.rig.train import chunked_table

    calls: list[int] = []

    def compute(k, fail_at=None):
        if k == fail_at:
            raise KeyboardInterrupt  # the run is stopped in chunk 2
        calls.append(k)
        return {"x": torch.full((2, 3), float(k)), "k": torch.tensor([k, k])}

    path, key = tmp_path / "table.safetensors", {"what": "test"}
    with pytest.raises(KeyboardInterrupt):
        chunked_table(path, key, 4, lambda k: compute(k, fail_at=2), desc="t", progress=False)
    assert calls == [0, 1] and not path.exists()
    table = chunked_table(path, key, 4, compute, desc="t", progress=False)
    assert calls == [0, 1, 2, 3]  # chunks 0 and 1 were kept, not computed again
    assert torch.equal(table["k"], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])) and table["x"].shape == (8, 3)
    assert not path.with_name("table.safetensors.chunks").exists()  # the finished table replaces its chunks
    assert torch.equal(chunked_table(path, key, 4, lambda k: 1 / 0, desc="t", progress=False)["k"], table["k"])
    with pytest.raises(KeyboardInterrupt):  # another key (another teacher): nothing of the old table is reused
        chunked_table(path, {"what": "other"}, 4, lambda k: compute(k, fail_at=0), desc="t", progress=False)


def test_photometric_fits_read_the_image_and_are_distilled(corpus, tmp_path, monkeypatch):
    """fit_photometric explains the corpus images better than the DFR reading it starts from, and a render-free
    student distils a cached table of them (TrainConfig.fits='photometric')."""
    from safetensors.torch import load_file

    from stylerig_engine.corpus import Corpus
    from stylerig_engine.render.face import FaceRenderer
    from stylerig_engine.rig.fitting import FIT_REG, fit_photometric
    from stylerig_engine.rig.losses import FaceLoss, LossWeights, region_model
    from stylerig_engine.rig.train import TrainConfig, train

    root, world = corpus
    teacher = train(TrainConfig(net="dfr", corpus=str(root), out=str(tmp_path / "t"), batch=8, hidden=32, steps=2),
                    progress=False)
    dfr = load_network(teacher)
    ws, images, landmarks, _ = Corpus(root).batch(np.arange(8))
    renderer = FaceRenderer(region_model(world.model), dfr.layout, image_size=32)
    with torch.no_grad():
        start = dfr(ws)
    fitted = fit_photometric(renderer, images, landmarks, start, steps=60)
    loss = FaceLoss(renderer, LossWeights.with_reg(FIT_REG))
    with torch.no_grad():
        before, after = (loss.data_terms(p, images, landmarks)["photometric"].mean() for p in (start, fitted))
    assert after < 0.8 * before
    truth = world.true_params(ws)
    light = dfr.layout.slice("illumination")
    assert (fitted - truth)[:, light].abs().mean() < (start - truth)[:, light].abs().mean()
    from stylerig_engine.rig import fitting

    monkeypatch.setattr(fitting, "PHOTOMETRIC_FIT_STEPS", 5)  # the table's machinery, not the fits' quality, here
    cfg = TrainConfig(net="dfr", corpus=str(root), out=str(tmp_path / "s"), batch=8, hidden=32, steps=2, distill=1.0,
                      render=False, teacher=str(teacher), fits="photometric")
    train(cfg, progress=False)
    table = load_file(str(tmp_path / "s" / "dfr.photometric-fit-targets.safetensors"))["targets"]
    assert table.shape == (48, dfr.layout.dim) and torch.isfinite(table).all()
    with pytest.raises(ValueError, match="fits must be one of"):
        TrainConfig(net="dfr", corpus="c", out="o", fits="photometric")  # needs distillation
    with pytest.raises(ValueError, match="fits must be one of"):
        TrainConfig(net="dfr", corpus="c", out="o", distill=1.0, fits="dense")


def test_a_wider_dfr_learns_from_a_teacher_without_rendering(corpus, tmp_path, monkeypatch):
    """render=False with a teacher: the targets are the teacher's landmark fits (the table is keyed by the teacher),
    the student never renders and learns every block of them; teacher and render=False need distillation."""
    from stylerig_engine.corpus import Corpus
    from stylerig_engine.render.face import FaceRenderer
    from stylerig_engine.rig.train import TrainConfig, distill_term, train

    root, _ = corpus
    teacher = train(TrainConfig(net="dfr", corpus=str(root), out=str(tmp_path / "t"), batch=8, hidden=32, steps=2),
                    progress=False)

    def no_render(*args, **kwargs):
        raise AssertionError("the render-free student rendered")

    monkeypatch.setattr(FaceRenderer, "forward", no_render)
    cfg = dict(net="dfr", corpus=str(root), batch=16, hidden=96, distill=1.0, render=False, teacher=str(teacher),
               lr=3e-3, log_every=1)
    student = train(TrainConfig(out=str(tmp_path / "s"), steps=30, **cfg), progress=False)
    log = [json.loads(x) for x in (tmp_path / "s" / "dfr.log.jsonl").read_text().splitlines()]
    assert set(log[0]) == {"step", "loss", "distill", "lr", "samples_per_s"}
    net, table = load_network(student), load_file_targets(tmp_path / "s")
    assert net.net[0].out_features == 96
    ws = torch.from_numpy(Corpus(root).read_rows(np.arange(48), names=("ws",))["ws"]).float()
    blocks = tuple(name for name, _ in net.layout.sizes)
    fresh = train(TrainConfig(out=str(tmp_path / "f"), steps=1, **{**cfg, "lr": 1e-9}), progress=False)
    with torch.no_grad():
        before = distill_term(net.layout, load_network(fresh)(ws), table, blocks)
        after = distill_term(net.layout, net(ws), table, blocks)
    assert float(after) < 0.7 * float(before)  # it learned the teacher's table
    teacher_net = load_network(teacher)
    with torch.no_grad():
        start = teacher_net(ws)
    appearance = torch.as_tensor(net.layout.mask(["albedo", "illumination"]))
    assert torch.allclose(table[:, appearance], start[:, appearance], atol=1e-5)  # light: the teacher's reading
    for bad in (dict(net="dfr", render=False), dict(net="dfr", teacher="t"),
                dict(net="rignet", mode="pose", dfr="d", teacher="t", distill=0.0)):
        with pytest.raises(ValueError, match="teacher and render"):
            TrainConfig(corpus="c", out="o", **bad)


def load_file_targets(run: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(run / "dfr.fit-targets.safetensors"))["targets"]


def test_rignet_parameter_terms_without_rendering(model, layout):
    """With the render terms off, RigNet's loss reads only DFR: an identity edit keeps every other block
    (P_consist = 0) and misses the target by exactly F(w)'s distance from F(v); edit_focus weighs what changes."""
    from stylerig_engine.render.face import FaceRenderer
    from stylerig_engine.rig.losses import FaceLoss, RigNetLossWeights, region_model, rignet_loss

    torch.manual_seed(0)
    dfr = DFR(layout, num_ws=14, w_dim=512, hidden=32, layer_code=8)
    torch.nn.init.normal_(dfr.net[-1].weight, std=0.1)
    rignet = RigNet("expression", layout, num_ws=14, w_dim=512)  # zero output layer: ŵ = w
    loss = FaceLoss(FaceRenderer(region_model(model), layout, image_size=32))
    w, v = torch.randn(4, 14, 512), torch.randn(4, 14, 512)
    mask = torch.as_tensor(layout.mask(["expression"]))
    z_w, z_v = layout.normalise(dfr(w)).detach(), layout.normalise(dfr(v)).detach()
    for focus in (0.0, 2.0):
        weights = RigNetLossWeights(edit=0, consistency=0, reconstruction=0, parameter_edit=1, parameter_consistency=1,
                                    edit_focus=focus)
        total, stats = rignet_loss(loss, dfr, rignet, w=w, v=v, image_w=None, image_v=None, landmarks_w=None,
                                   landmarks_v=None, weights=weights)
        f = 1 + focus * (z_v - z_w).abs()[:, mask]
        expected = ((f * (z_w - z_v)[:, mask].square()).sum(1) / f.sum(1)).mean()
        assert stats["param_consist"] == 0.0 and "edit_photometric" not in stats
        assert float(total.detach()) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="edit_focus"):
        RigNetLossWeights(edit_focus=-1)


def test_key_edit_targets_key_a_few_controls_on_the_face(layout):
    """KeyEditSampler keys 1..MAX_KEYED_ENTRIES of the mode's entries (plus, sometimes, their left/right twins) to
    values inside the readings' range, and leaves every other entry of the face's reading alone."""
    from stylerig_engine.rig.key_edits import MAX_KEYED_ENTRIES, KeyEditSampler, mirror_index

    assert mirror_index(["jawOpen", "eyeBlink_L", "mouthSmile_R", "eyeBlink_R", "mouthSmile_L"]) == [0, 3, 4, 1, 2]
    torch.manual_seed(0)
    readings = layout.clamp(torch.as_tensor(layout.prior_mean) + 0.5 * torch.as_tensor(layout.prior_std)
                            * torch.randn(500, layout.dim))
    sampler = KeyEditSampler(layout, "expression", readings)
    start = readings[:200]
    target = sampler(start)
    controlled = torch.as_tensor(layout.mask(["expression"]))
    changed = target != start
    assert not changed[:, ~controlled].any()
    counts = changed.sum(1)
    assert counts.min() >= 1 and counts.max() <= 2 * MAX_KEYED_ENTRIES and counts.float().mean() > 1.5
    expression = target[:, controlled]
    low = torch.minimum(sampler.low, sampler.low[sampler.twin])  # a mirrored key takes its twin's value
    high = torch.maximum(sampler.high, sampler.high[sampler.twin])
    assert (expression >= low - 1e-6).where(changed[:, controlled], True).all()
    assert (expression <= high + 1e-6).where(changed[:, controlled], True).all()
    names = [n.split("/")[-1] for n in layout.names[layout.slice("expression")]]
    left, right = names.index("eyeBlink_L"), names.index("eyeBlink_R")
    both = changed[:, controlled][:, left] & changed[:, controlled][:, right]
    assert both.any() and (expression[both, left] == expression[both, right]).float().mean() > 0.5  # mirrored keys
    torch.manual_seed(1)
    again = sampler(start)
    torch.manual_seed(1)
    assert torch.equal(again, sampler(start))  # seeded runs draw the same targets
    pose = KeyEditSampler(layout, "pose", readings)(start)
    assert not (pose != start)[:, ~torch.as_tensor(layout.mask(["rotation", "translation"]))].any()
    with pytest.raises(ValueError, match="readings"):
        KeyEditSampler(layout, "pose", readings[:, :5])


def test_key_edit_loss_reads_only_dfr_and_the_face_image(model, layout):
    """With L_consist off and ŵ = w (a RigNet with a zero output layer), the key-edit loss is exactly the focused
    parameter miss of F(w) against the keyed target, and P_consist is 0; with L_consist on it renders against I_w."""
    from stylerig_engine.render.face import FaceRenderer
    from stylerig_engine.rig.losses import FaceLoss, RigNetLossWeights, key_edit_loss, region_model

    torch.manual_seed(0)
    dfr = DFR(layout, num_ws=14, w_dim=512, hidden=32, layer_code=8)
    torch.nn.init.normal_(dfr.net[-1].weight, std=0.1)
    rignet = RigNet("expression", layout, num_ws=14, w_dim=512)
    renderer = FaceRenderer(region_model(model), layout, image_size=32)
    loss = FaceLoss(renderer)
    w = torch.randn(3, 14, 512)
    p_w = dfr(w).detach()
    target = p_w.clone()
    index = layout.slice("expression").start + [n.split("/")[-1] for n in
                                                layout.names[layout.slice("expression")]].index("jawOpen")
    target[:, index] = 0.7
    weights = RigNetLossWeights(consistency=0, edit_focus=2.0)
    total, stats = key_edit_loss(loss, dfr, rignet, w=w, target=target, image_w=None, landmarks_w=None,
                                 weights=weights)
    mask = torch.as_tensor(layout.mask(["expression"]))
    z_w, z_t = layout.normalise(p_w)[:, mask], layout.normalise(target)[:, mask]
    focus = 1 + 2.0 * (z_t - z_w).abs()
    expected = ((focus * (z_w - z_t).square()).sum(1) / focus.sum(1)).mean()
    assert stats["param_consist"] == 0.0 and "consist_photometric" not in stats
    assert float(total.detach()) == pytest.approx(float(expected), rel=1e-5) and float(total.detach()) > 0
    with torch.no_grad():
        out = renderer(p_w)
    images, landmarks = out.image * 2 - 1, out.landmarks
    _, stats = key_edit_loss(loss, dfr, rignet, w=w, target=target, image_w=images, landmarks_w=landmarks)
    assert stats["consist_landmark"] == pytest.approx(0.0, abs=1e-10)  # ŵ = w: F(w) renders its own landmarks
    with pytest.raises(ValueError, match="target must be"):
        key_edit_loss(loss, dfr, rignet, w=w, target=target[:, :4], image_w=images, landmarks_w=landmarks)


def test_rignet_training_with_key_edits(corpus, tmp_path):
    """A RigNet run with key_edits logs both kinds of edit and learns; key_edits are refused where they cannot work."""
    from stylerig_engine.rig.train import TrainConfig, train

    root, _ = corpus
    dfr = train(TrainConfig(net="dfr", corpus=str(root), out=str(tmp_path), steps=2, batch=8, hidden=64),
                progress=False)
    train(TrainConfig(net="rignet", mode="expression", dfr=str(dfr), corpus=str(root), out=str(tmp_path), steps=2,
                      batch=8, hidden=64, log_every=1, key_edits=0.5), progress=False)
    log = [json.loads(x) for x in (tmp_path / "rignet-expression.log.jsonl").read_text().splitlines()]
    assert {"rec", "edit_photometric", "param_edit", "key_param_edit", "key_consist_photometric"} <= set(log[0])
    assert "key_edit_photometric" not in log[0] and all(math.isfinite(row["loss"]) for row in log)
    for bad in (dict(net="dfr", key_edits=0.5), dict(net="rignet", mode="pose", dfr="d", key_edits=1.0),
                dict(net="rignet", mode="pose", dfr="d", key_edits=0.5, rignet_loss={"parameter_edit": 0.0})):
        with pytest.raises(ValueError, match="key_edits"):
            TrainConfig(corpus="c", out="o", **bad)


def test_edited_latents_teach_the_student_where_rignets_edit(corpus, tmp_path, monkeypatch):
    """edited_by: corpus latents edited by a rig's RigNets (only on their layers, reproducibly), fitted to their own
    landmarks (the generator's), cached, and mixed into every student batch at edited_share."""
    from stylerig_engine.corpus import Corpus
    from stylerig_engine.rig import edited_latents
    from stylerig_engine.rig.evaluate import rotation_error_deg
    from stylerig_engine.rig.train import TrainConfig, _student_batch, train

    root, G = corpus
    teacher = train(TrainConfig(net="dfr", corpus=str(root), out=str(tmp_path / "rig"), batch=8, hidden=32,
                                steps=2), progress=False)
    teacher_net = load_network(teacher)
    torch.manual_seed(1)
    pose = RigNet("pose", teacher_net.layout, num_ws=G.num_ws, w_dim=G.w_dim)
    torch.nn.init.normal_(pose.decoder_out.weight, std=0.05)  # a RigNet that edits noticeably
    pose.normaliser.set_statistics(teacher_net.normaliser.w_avg[None] + torch.randn(64, G.num_ws, G.w_dim))
    save_network(pose, tmp_path / "rig" / "rignet-pose.safetensors")

    cfg = dict(net="dfr", corpus=str(root), batch=16, hidden=32, distill=1.0, render=False, teacher=str(teacher),
               edited_by=str(tmp_path / "rig"), edited_count=20, edited_share=0.5)
    train(TrainConfig(out=str(tmp_path / "s"), steps=2, **cfg), progress=False)
    from safetensors.torch import load_file

    table = load_file(str(tmp_path / "s" / "dfr.edited-targets.safetensors"))
    edited, targets = table["ws"], table["targets"]
    assert edited.shape == (20, G.num_ws, G.w_dim) and targets.shape == (20, teacher_net.layout.dim)
    c = Corpus(root)
    start = torch.from_numpy(c.read_rows(edited_latents.edited_rows(c, 20, 0), names=("ws",))["ws"]).float()
    moved = (edited - start).abs().amax(dim=(0, 2)) > 1e-4
    assert moved.nonzero().flatten().tolist() == list(pose.layers)  # only the RigNet's layers change
    truth = G.true_params(edited)
    rot = teacher_net.layout.slice("rotation")
    with torch.no_grad():
        reading = teacher_net(edited)
    assert rotation_error_deg(targets[:, rot], truth[:, rot]).median() < \
        0.5 * rotation_error_deg(reading[:, rot], truth[:, rot]).median()  # fitted to the edited faces' landmarks
    appearance = torch.as_tensor(teacher_net.layout.mask(["albedo", "illumination"]))
    assert torch.allclose(targets[:, appearance], reading[:, appearance], atol=1e-5)

    editor = edited_latents.LatentEditor(tmp_path / "rig", teacher_net, start)
    assert torch.equal(editor(start, 3), editor(start, 3)) and not torch.equal(editor(start, 3), editor(start, 4))

    # every batch: round(share · batch) rows from the edited table, the rest from the corpus table
    run = TrainConfig(out=str(tmp_path / "s"), steps=2, **cfg)
    fits = torch.zeros(len(c), teacher_net.layout.dim)
    ws, wanted = _student_batch(c, fits, table, run, 0, 0, 1)
    from_edited = (ws[:, None] == edited[None]).flatten(2).all(2).any(1)
    assert len(ws) == 16 and int(from_edited.sum()) == 8
    assert torch.equal(wanted[from_edited].abs().sum(1) > 0, torch.ones(8, dtype=torch.bool))

    def refit(*args, **kwargs):
        raise AssertionError("the cached edited table was recomputed")

    monkeypatch.setattr(edited_latents, "edited_fit_chunk", refit)  # same rig, teacher, count, seed: cached
    train(TrainConfig(out=str(tmp_path / "s"), steps=3, **cfg), resume=True, progress=False)
    for bad in (dict(cfg, render=True, teacher=None), dict(cfg, edited_share=1.0), dict(cfg, edited_count=0),
                dict(cfg, edited_by=None)):
        with pytest.raises(ValueError, match="edited"):
            TrainConfig(out="o", **bad)


def test_train_dfr_edited_by_from_the_command_line(corpus, tmp_path):
    """--edited-by makes a render-free run learn edited latents too; --edited-count defaults to half the corpus."""
    from stylerig_engine.cli import main
    from stylerig_engine.rig.train import TrainConfig, train

    root, G = corpus
    teacher = train(TrainConfig(net="dfr", corpus=str(root), out=str(tmp_path / "rig"), batch=8, hidden=32,
                                steps=1), progress=False)
    train(TrainConfig(net="rignet", mode="expression", dfr=str(teacher), corpus=str(root), out=str(tmp_path / "rig"),
                      steps=1, batch=8, hidden=16), progress=False)
    assert main(["train", "dfr", "--corpus", str(root), "--out", str(tmp_path / "s"), "--steps", "1", "--batch", "8",
                 "--hidden", "16", "--distill", "1", "--no-render", "--teacher", str(teacher), "--edited-by",
                 str(tmp_path / "rig")]) == 0
    config = json.loads((tmp_path / "s" / "dfr.config.json").read_text())
    assert (config["edited_by"], config["edited_count"], config["edited_share"]) == (str(tmp_path / "rig"), 24, 0.33)
    assert (tmp_path / "s" / "dfr.edited-targets.safetensors").is_file()


def test_a_shared_code_rignet_starts_from_a_paper_rignet_and_roundtrips(corpus, layout, tmp_path):
    """shared_code: each layer's decoder also sees every controlled layer's code; from a paper RigNet's checkpoint
    it starts as that network exactly, then learns; it survives a checkpoint; only RigNet runs take it."""
    from stylerig_engine.rig.train import TrainConfig, _initialise_from, train

    root, G = corpus
    dfr = train(TrainConfig(net="dfr", corpus=str(root), out=str(tmp_path), steps=1, batch=8, hidden=32),
                progress=False)
    paper = train(TrainConfig(net="rignet", mode="pose", dfr=str(dfr), corpus=str(root), out=str(tmp_path / "p"),
                              steps=3, batch=8, hidden=32), progress=False)
    shared = RigNet("pose", layout, num_ws=G.num_ws, w_dim=G.w_dim, hidden=32, shared_code=True)
    _initialise_from(shared, str(paper))
    w, target = torch.randn(3, G.num_ws, G.w_dim), torch.randn(3, layout.dim)
    with torch.no_grad():
        assert torch.equal(shared(w, target), load_network(paper)(w, target))
    tuned = train(TrainConfig(net="rignet", mode="pose", dfr=str(dfr), corpus=str(root), out=str(tmp_path / "s"),
                              steps=3, batch=8, hidden=32, shared_code=True, init=str(paper), lr=1e-2),
                  progress=False)
    net = load_network(tuned)
    assert net.context is not None and float(net.context.weight.detach().abs().max()) > 0  # it learned
    with torch.no_grad():
        assert not torch.allclose(net(w, target), load_network(paper)(w, target))
    save_network(net, tmp_path / "copy.safetensors")
    with torch.no_grad():
        assert torch.equal(load_network(tmp_path / "copy.safetensors")(w, target), net(w, target))
    with pytest.raises(ValueError, match="shapes differ"):  # a shared-code network cannot start a paper one
        _initialise_from(RigNet("pose", layout, num_ws=G.num_ws, w_dim=G.w_dim, hidden=32), str(tuned))
    with pytest.raises(ValueError, match="shared_code"):
        TrainConfig(net="dfr", corpus="c", out="o", shared_code=True)


def test_train_all_reader_rounds_fine_tune_dfr_on_edited_latents(tmp_path, capsys):
    """--reader-rounds 2: round 2 fine-tunes the student on its own fits and on round 1's RigNets' edits, then the
    RigNets through it; the rig (evaluated and shipped) is round 2's."""
    from stylerig_engine.cli import main

    run, ship = tmp_path / "run", tmp_path / "ship"
    common = ["train", "all", "--generator", "synthetic:32", "--count", "24", "--batch", "8", "--dfr-steps", "2",
              "--distill-steps", "4", "--rignet-steps", "2", "--modes", "pose", "--eval-count", "8", "--layer-code",
              "8", "--distill-hidden", "32", "--distill-batch", "8", "--out", str(run)]
    assert main([*common, "--reader-rounds", "2", "--shared-code", "--ship", str(ship)]) == 0
    second = json.loads((run / "round-2" / "dfr.config.json").read_text())
    assert (second["edited_by"], second["init"], second["teacher"]) == (str(run), str(run / "dfr.safetensors"),
                                                                      str(run / "dfr.safetensors"))
    assert (second["steps"], second["edited_count"], second["render"]) == (2, 12, False)
    pose = json.loads((run / "round-2" / "rignet-pose.config.json").read_text())
    assert (pose["dfr"], pose["init"], pose["shared_code"]) == (str(run / "round-2" / "dfr.safetensors"),
                                                                str(run / "rignet-pose.safetensors"), True)
    assert (run / "round-2" / "dfr.edited-targets.safetensors").is_file()
    report = json.loads((ship / "evaluation.json").read_text())
    assert report["training"]["reader_rounds"] == 2 and report["training"]["shared_code"] is True
    assert json.loads((ship / "dfr.config.json").read_text())["edited_by"] == str(run)
    assert main([*common, "--reader-rounds", "0"]) == 2
    assert "--reader-rounds" in capsys.readouterr().err


def test_edited_latents_name_a_rig_without_rignets_and_another_generator(corpus, tmp_path, monkeypatch, capsys):
    """--edited-by a directory with no RigNet, or a corpus whose generator now resolves to other weights: one error
    line naming the problem and a non-zero exit, and the run directory's cached fit table is kept."""
    from stylerig_engine.cli import main
    from stylerig_engine.corpus import Corpus
    from stylerig_engine.rig import edited_latents
    from stylerig_engine.rig.train import TrainConfig, train

    root, _ = corpus
    teacher = train(TrainConfig(net="dfr", corpus=str(root), out=str(tmp_path / "rig"), batch=8, hidden=32,
                                steps=1), progress=False)
    args = ["train", "dfr", "--corpus", str(root), "--out", str(tmp_path / "s"), "--steps", "1", "--batch", "8",
            "--hidden", "16", "--distill", "1", "--no-render", "--teacher", str(teacher), "--edited-by",
            str(tmp_path / "rig")]
    assert main(args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (beside progress bars)
    assert len(errors) == 1 and errors[0].startswith("stylerig train dfr: error: ")
    assert "no RigNet checkpoints" in errors[0]
    assert (tmp_path / "s" / "dfr.fit-targets.safetensors").is_file()  # the corpus's fits are not lost
    monkeypatch.setattr(edited_latents, "describe_generator", lambda gen: {"weights_sha256": "0" * 64})
    with pytest.raises(CheckpointError, match="other weights than the corpus was made with"):
        edited_latents.corpus_generator(Corpus(root), "cpu")


def test_light_calibration_recovers_an_affine_light_and_folds_into_dfr(layout):
    """The regression finds the affine map between two readings of light, and folding it into DFR's output layer
    re-reads exactly the light (every other block unchanged)."""
    from stylerig_engine.rig.light_calibration import fold_light_calibration, solve_light_calibration
    from stylerig_engine.rig.networks import DFR

    torch.manual_seed(0)
    dfr = DFR(layout, num_ws=4, w_dim=16, hidden=32, layer_code=8)
    torch.nn.init.normal_(dfr.net[-1].weight, std=0.3)
    ws = torch.randn(400, 4, 16)
    with torch.no_grad():
        readings = dfr(ws)
    light = layout.slice("illumination")
    n = light.stop - light.start
    mean, std = (torch.as_tensor(a[light]) for a in (layout.prior_mean, layout.prior_std))
    a = torch.eye(n) * 0.7 + 0.05 * torch.randn(n, n)
    c = 0.3 * torch.randn(n)
    fits = readings.clone()
    fits[:, light] = mean + std * ((readings[:, light] - mean) / std @ a.T + c)
    solution = solve_light_calibration(layout, readings, fits, ridge=1e-6)
    assert solution.shape == (n + 1, n)
    assert torch.allclose(solution[:n].T, a, atol=1e-3) and torch.allclose(solution[n], c, atol=1e-3)
    calibrated = fold_light_calibration(dfr, solution)
    with torch.no_grad():
        again = calibrated(ws)
    assert torch.allclose(again[:, light], fits[:, light], atol=1e-4)
    others = torch.ones(layout.dim, dtype=torch.bool)
    others[light] = False
    assert torch.equal(again[:, others], readings[:, others])
    assert torch.equal(dfr(ws), readings)  # the original is left as it was
    with pytest.raises(ValueError, match="light calibration"):
        fold_light_calibration(dfr, solution[:n])
    with pytest.raises(ValueError, match="readings and fits"):
        solve_light_calibration(layout, readings, fits[:, :n])


def test_light_calibration_command_writes_a_dfr_and_resumes_from_its_fits(corpus, tmp_path, monkeypatch, capsys):
    from stylerig_engine.cli import main
    from stylerig_engine.rig import SHIPPED_RIG, load_rig
    from stylerig_engine.rig.checkpoints import load_network, read_description
    from stylerig_engine.rig.fitting import ImageReader

    root, _ = corpus
    out = tmp_path / "dfr.safetensors"
    args = ["train", "light-calibration", "--rig", str(SHIPPED_RIG), "--corpus", str(root), "--count", "3",
            "--generator", "synthetic:32", "--out", str(out)]
    assert main(args) == 0
    shipped, calibrated = load_rig().dfr, load_network(out)
    layout = shipped.layout
    ws = torch.randn(8, shipped.num_ws, shipped.w_dim) * 0.5
    with torch.no_grad():
        before, after = shipped(ws), calibrated(ws)
    light = layout.slice("illumination")
    assert torch.equal(before[:, :light.start], after[:, :light.start])  # every other block as shipped
    assert (before[:, light] - after[:, light]).abs().max() > 1e-3  # the light re-read
    extra = read_description(out)["extra"]["light_calibration"]
    assert extra["count"] == 3 and extra["faces"] == 6  # plain and illumination-edited
    assert (tmp_path / "dfr.safetensors.fits.safetensors").is_file()

    def no_fits(*_args, **_kwargs):
        raise AssertionError("the cached fits were not reused")

    monkeypatch.setattr(ImageReader, "__call__", no_fits)
    assert main(args) == 0  # the same latents, rig and fit: the cached fits, no fit run
    with torch.no_grad():
        assert torch.equal(load_network(out)(ws), after)
    capsys.readouterr()
    assert main(["train", "light-calibration", "--rig", str(SHIPPED_RIG), "--corpus", str(root), "--count", "1000",
                 "--generator", "synthetic:32", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--count 1000" in err[0]
    assert main(args[:-2] + ["--landmarks", "none", "--out", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--landmarks none" in err[0] and not (tmp_path / "none.safetensors").exists()
