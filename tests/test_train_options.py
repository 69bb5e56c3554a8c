"""Training options for large batches on a GPU: learning-rate scaling, bfloat16 networks, torch.compile; their
configuration files (old ones included) and command-line flags."""

import json
import math

import pytest
import torch

from stylerig_engine.cli import main
from stylerig_engine.rig import load_network
from stylerig_engine.rig.train import LR_REFERENCE_BATCH, LR_SCALINGS, PRECISIONS, TrainConfig, train

NEW_KEYS = ("lr_scaling", "precision", "compile")  # the fields these options added to TrainConfig


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """16 synthetic samples at 32 px with exact landmarks: two batches of 8."""
    from stylerig_engine.corpus import CorpusConfig, build_corpus
    from stylerig_engine.synthetic import SyntheticGenerator

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(CorpusConfig(generator="synthetic:32", count=16, size=32, psi=0.8), out,
                 generator=SyntheticGenerator(resolution=32), progress=False)
    return out


def tiny(corpus, out, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(net="dfr", corpus=str(corpus), out=str(out), steps=2, batch=8, hidden=64, lr=3e-3,
                                 lr_schedule="constant", log_every=1), **kw})


def log_of(run, name="dfr") -> list[dict]:
    return [json.loads(line) for line in (run / f"{name}.log.jsonl").read_text().splitlines()]


def test_lr_scaling_scales_the_peak_from_batch_32():
    assert LR_REFERENCE_BATCH == 32

    def lrs(scaling, batch):  # steps 0 and 1 warm up (2 % of 100), step 51 is halfway down the cosine
        cfg = TrainConfig(net="dfr", corpus="c", out="o", steps=100, warmup=0.02, lr=1e-3, batch=batch,
                          lr_scaling=scaling)
        return [cfg.learning_rate(s) for s in (0, 1, 51, 99)]

    assert lrs("none", 128) == pytest.approx([5e-4, 1e-3, 5e-4, 1e-3 * 0.5 * (1 + math.cos(math.pi * 97 / 98))])
    assert lrs("sqrt", 128) == pytest.approx([1e-3, 2e-3, 1e-3, 2e-3 * 0.5 * (1 + math.cos(math.pi * 97 / 98))])
    assert lrs("linear", 128) == pytest.approx([2e-3, 4e-3, 2e-3, 4e-3 * 0.5 * (1 + math.cos(math.pi * 97 / 98))])
    assert lrs("sqrt", 32) == lrs("linear", 32) == lrs("none", 32)  # the reference batch keeps --lr
    assert lrs("sqrt", 8)[1] == pytest.approx(5e-4)  # and smaller batches scale down
    constant = TrainConfig(net="dfr", corpus="c", out="o", lr=1e-3, batch=256, lr_schedule="constant",
                           lr_scaling="sqrt")
    assert constant.peak_lr == constant.learning_rate(7) == pytest.approx(1e-3 * math.sqrt(8))
    with pytest.raises(ValueError, match="lr_scaling must be one of none, sqrt, linear, got 'cube'"):
        TrainConfig(net="dfr", corpus="c", out="o", lr_scaling="cube")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        TrainConfig(net="dfr", corpus="c", out="o", precision="fp16")


def test_config_roundtrip_and_configs_written_before_the_options(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path / "new", lr_scaling="linear", precision="bf16", compile=True)
    cfg.save(tmp_path / "c.json")
    loaded = TrainConfig.load(tmp_path / "c.json")
    assert loaded == cfg and (loaded.lr_scaling, loaded.precision, loaded.compile) == ("linear", "bf16", True)
    # a configuration file from before these options: the defaults, and its run resumes
    run = tmp_path / "old"
    train(tiny(corpus, run, steps=1), progress=False)
    config = json.loads((run / "dfr.config.json").read_text())
    for key in NEW_KEYS:
        del config[key]
    (run / "dfr.config.json").write_text(json.dumps(config))
    old = TrainConfig.load(run / "dfr.config.json")
    assert (old.lr_scaling, old.precision, old.compile) == ("none", "fp32", False)
    train(tiny(corpus, run, steps=2), progress=False, resume=True)
    assert [r["step"] for r in log_of(run)] == [1, 2]
    assert {key: json.loads((run / "dfr.config.json").read_text())[key] for key in NEW_KEYS} == \
        {"lr_scaling": "none", "precision": "fp32", "compile": False}


def test_bf16_networks_train_with_float32_weights_and_losses(corpus, tmp_path):
    assert PRECISIONS["bf16"] == torch.bfloat16
    # fresh networks start at an output that does not depend on their input (DFR at the prior mean, RigNet at
    # the identity): start from briefly trained ones, whose forward bfloat16 rounds
    dfr = train(tiny(corpus, tmp_path / "start"), progress=False)
    rignet = dict(net="rignet", mode="expression", dfr=str(dfr))
    start_rignet = train(tiny(corpus, tmp_path / "start", **rignet), progress=False)
    runs = {}
    for precision in PRECISIONS:
        run = tmp_path / precision
        ckpt = train(tiny(corpus, run, precision=precision, init=str(dfr)), progress=False)
        train(tiny(corpus, run, precision=precision, init=str(start_rignet), **rignet), progress=False)
        runs[precision] = {"dfr": log_of(run), "rignet": log_of(run, "rignet-expression"), "checkpoint": ckpt}
    for name in ("dfr", "rignet"):
        assert all(math.isfinite(v) for row in runs["bf16"][name] for v in row.values()), name
        # the same weights and batch: the first losses differ only by the networks' bfloat16 rounding
        first = {p: runs[p][name][0]["loss"] for p in PRECISIONS}
        assert first["bf16"] != first["fp32"], f"{name}: bf16 did not change the forward"
        assert first["bf16"] == pytest.approx(first["fp32"], rel=1e-3), name
    net = load_network(runs["bf16"]["checkpoint"])
    assert all(v.dtype == torch.float32 for v in net.state_dict().values() if v.is_floating_point())
    assert list(net.state_dict()) == list(load_network(runs["fp32"]["checkpoint"]).state_dict())


# compiling DFR's forward and backward needs a C++ compiler; the test takes 20-105 s on the 2-core development VM,
# depending on its load
@pytest.mark.slow
def test_compiled_training_matches_and_saves_the_plain_network(corpus, tmp_path):
    from torch._dynamo.utils import counters

    plain = train(tiny(corpus, tmp_path / "plain"), progress=False)
    graphs = counters["stats"]["unique_graphs"]
    compiled = train(tiny(corpus, tmp_path / "compiled", compile=True), progress=False)
    assert counters["stats"]["unique_graphs"] > graphs  # the steps ran compiled
    a, b = load_network(plain).state_dict(), load_network(compiled).state_dict()
    assert list(a) == list(b)  # no "_orig_mod." prefixes
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    train(tiny(corpus, tmp_path / "compiled", compile=True, steps=3), progress=False, resume=True)
    assert [r["step"] for r in log_of(tmp_path / "compiled")] == [1, 2, 3]


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's usage errors exit 2
        code = e.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_cli_flags_reach_the_run(corpus, tmp_path, capsys):
    code, err = run_cli(capsys, "train", "dfr", "--corpus", str(corpus), "--out", str(tmp_path), "--steps", "1",
                        "--batch", "8", "--lr", "1e-3", "--lr-scaling", "sqrt", "--precision", "bf16")
    assert code == 0, err
    config = json.loads((tmp_path / "dfr.config.json").read_text())
    assert (config["lr_scaling"], config["precision"], config["compile"]) == ("sqrt", "bf16", False)
    assert log_of(tmp_path)[0]["lr"] == pytest.approx(1e-3 * math.sqrt(8 / 32))  # one step: the peak at once
    # train all passes them to every stage it trains
    from stylerig_engine.cli import build_parser
    from stylerig_engine.rig.commands import _config

    args = build_parser().parse_args(["train", "all", "--out", str(tmp_path / "all"), "--batch", "256",
                                      "--lr-scaling", "linear", "--precision", "bf16", "--compile"])
    for net, extra in (("dfr", {}), ("rignet", dict(mode="pose", dfr="dfr.safetensors"))):
        cfg = _config(args, net, corpus="c", **extra)
        assert (cfg.lr_scaling, cfg.precision, cfg.compile, cfg.peak_lr) == ("linear", "bf16", True, cfg.lr * 8)


@pytest.mark.parametrize(("flag", "value", "choices"), [("--lr-scaling", "cube", LR_SCALINGS),
                                                        ("--precision", "fp16", PRECISIONS)])
def test_cli_refuses_an_unknown_choice_in_one_line(capsys, tmp_path, flag, value, choices):
    code, err = run_cli(capsys, "train", "dfr", "--corpus", str(tmp_path), "--out", str(tmp_path), flag, value)
    assert code == 2
    # the parser's choices are TrainConfig's (written out in commands.py so that the parser imports no torch)
    assert err[-1] == (f"stylerig train dfr: error: argument {flag}: invalid choice: {value!r} "
                       f"(choose from {', '.join(map(repr, choices))})")
    assert not any("Traceback" in line for line in err)
