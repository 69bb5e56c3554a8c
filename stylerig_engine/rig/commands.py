"""`stylerig train dfr|rignet|all` and `stylerig evaluate`."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from ..fileio import atomic_write
from ..params import CONTROL_MODES, PAPER_MODES

EDITED_SHARE = 0.33  # of a render-free DFR's batch, drawn from edited latents (--edited-share, train all's rounds)
# train all's last stage, per mode: the RigNet fine-tuned --ramp-steps at each parameter consistency weight α_pc in
# turn (RigNetLossWeights.parameter_consistency; the shipped rig's recipe, docs/rig.md item 10 and "Shipped
# checkpoints"). A stronger α_pc took the expression RigNet's drift from 0.127 to 0.087 σ once the live edit corrects
# the keys, and the illumination RigNet's from 0.221 to 0.079 σ at the same light error; raised in steps, each
# fine-tune starts where the last one's edits already were.
CONSISTENCY_RAMP: dict[str, tuple[float, ...]] = {"expression": (40.0, 80.0),
                                                   "illumination": (10.0, 30.0, 100.0, 200.0)}
RAMP_LR = 1.5e-4  # at batch 32
RAMP_SHARE = 0.2  # steps of each ramp stage, as a share of --rignet-steps (the shipped recipe: 800 after 4,000)
LIGHT_CALIBRATION_COUNT = 320  # train all's light stage: corpus latents fitted (the shipped recipe's; docs/rig.md)


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train DFR and RigNets on a corpus (or everything: train all)")
    kinds = train.add_subparsers(dest="kind", metavar="KIND", required=True)

    def common(p, *, corpus=True):
        if corpus:
            p.add_argument("--corpus", required=True, help="corpus directory (stylerig corpus)")
        p.add_argument("--out", required=True, help="run directory for checkpoints, config and logs")
        p.add_argument("--steps", type=int, default=None, help="optimisation steps")
        p.add_argument("--batch", type=int, default=32, help="global batch size")
        p.add_argument("--lr", type=float, default=None,
                       help="Adam learning rate (peak of the schedule) at batch 32; --lr-scaling scales it to --batch")
        p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                       help="cosine: warm-up then cosine decay to 0 (default); constant")
        # the choices are train.LR_SCALINGS and train.PRECISIONS, written out: building the parser imports no torch
        p.add_argument("--lr-scaling", choices=("none", "sqrt", "linear"), default="none",
                       help="peak learning rate for --batch B: none (--lr as given, default), sqrt (--lr × √(B/32), "
                            "for large batches with Adam) or linear (--lr × B/32)")
        p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                       help="bf16: the networks' forward in bfloat16 (autocast), renderer and losses in float32 "
                            "(default fp32)")
        p.add_argument("--compile", action="store_true",
                       help="torch.compile the networks: fewer kernel launches on a GPU, after tens of seconds of "
                            "compilation")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--resume", action="store_true", help="continue the run in --out")
        p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        p.add_argument("--model", default=None, help="morphable model name or .npz (default: ICT)")
        p.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads per process (1 is often fastest on small, shared machines)")
        p.add_argument("--loss", default=None, metavar="NAME=VALUE,...",
                       help="override loss weights, e.g. landmark=200,expression_reg=1e-5 (names: "
                            "LossWeights fields, see docs/rig.md)")

    dfr = kinds.add_parser("dfr", help="train DFR (latent -> face parameters), self-supervised")
    common(dfr)
    dfr.add_argument("--layer-code", type=int, default=64,
                     help="per-W+-layer code width of DFR's first layer (0: one MLP on the flat W+, as the paper)")
    dfr.add_argument("--reg", type=float, default=None,
                     help="weight of the statistical regulariser of identity, albedo and expression "
                          "(default: LossWeights', see docs/rig.md)")
    dfr.add_argument("--distill", type=float, default=0.0,
                     help="weight of the landmark-fit distillation term (0: off; see docs/rig.md); best with --init "
                          "a trained DFR")
    dfr.add_argument("--fits", choices=("landmark", "photometric"), default="landmark",
                     help="with --distill: the per-image fits distilled: landmark (seconds for a corpus) or "
                          "photometric (every block, ~3.3 s a face on a CPU core: a GPU job; resumable; docs/rig.md)")
    dfr.add_argument("--hidden", type=int, default=256, help="width of DFR's hidden layers")
    dfr.add_argument("--teacher", default=None, metavar="CHECKPOINT",
                     help="with --distill: the trained DFR whose readings start the landmark fits and give the other "
                          "blocks' targets (default: the run's own initial network)")
    dfr.add_argument("--no-render", dest="render", action="store_false",
                     help="with --distill: learn from the distillation targets alone, every block, without rendering "
                          "(a regression, far cheaper per step; docs/rig.md)")
    dfr.add_argument("--edited-by", default=None, metavar="RIG_DIR",
                     help="with --no-render: also learn corpus latents edited by this rig's RigNets, with their "
                          "landmark fits as targets, so that DFR reads where RigNet edits go (docs/rig.md)")
    dfr.add_argument("--edited-count", type=int, default=None,
                     help="with --edited-by: how many edited latents (default: half the corpus)")
    dfr.add_argument("--edited-share", type=float, default=EDITED_SHARE,
                     help="with --edited-by: the share of every batch drawn from the edited latents (default "
                          f"{EDITED_SHARE})")
    dfr.set_defaults(func=_train_one, net="dfr")
    rig = kinds.add_parser("rignet", help="train the RigNet of one control mode against a trained DFR")
    common(rig)
    rig.add_argument("--mode", required=True, choices=sorted(CONTROL_MODES))
    rig.add_argument("--dfr", required=True, help="DFR checkpoint (dfr.safetensors)")
    rig.add_argument("--layers", default=None, help="W+ layers the mode may change, e.g. 0-4 or 0,1,2")
    rig.add_argument("--shared-code", action="store_true",
                     help="each layer's decoder also sees the codes of all the mode's layers (the face's whole state; "
                          "docs/rig.md); --init may be a RigNet without it")
    for p in (dfr, rig):
        p.add_argument("--init", default=None, metavar="CHECKPOINT",
                       help="start from this checkpoint's weights (fine-tuning; same kind and shape)")
    rig.set_defaults(func=_train_one, net="rignet")
    light = kinds.add_parser("light-calibration",
                             help="re-read a rig's DFR light through an affine map learned from per-image photometric "
                                  "fits of corpus latents and their illumination edits (docs/rig.md, item 13)")
    light.add_argument("--rig", required=True, help="rig directory: its DFR, and its illumination RigNet for the edits")
    light.add_argument("--corpus", required=True, help="corpus directory: the first --count latents are fitted")
    light.add_argument("--out", required=True, help="the calibrated DFR checkpoint to write (its fits are cached "
                                                     "beside it, so an interrupted run resumes)")
    light.add_argument("--generator", default="synthetic:64", help="the rig's generator (images)")
    light.add_argument("--landmarks", default="auto",
                       help="the fits' landmark detector (as stylerig corpus --landmarks; auto = the generator's own, "
                            "else the offline detector)")
    light.add_argument("--device", default="cpu")
    light.add_argument("--count", type=int, default=LIGHT_CALIBRATION_COUNT,
                       help="corpus latents (each fitted plain and edited, ~3.3 s a fit on a CPU core)")
    light.add_argument("--ridge", type=float, default=None, help="ridge weight of the regression (default 1)")
    light.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    light.set_defaults(func=_light_calibration)
    everything = kinds.add_parser("all", help="corpus -> DFR -> RigNets (pose, expression, illumination) -> evaluation")
    common(everything, corpus=False)
    everything.add_argument("--generator", default="synthetic:64", help="generator spec (default synthetic:64)")
    everything.add_argument("--count", type=int, default=4000, help="corpus samples")
    everything.add_argument("--landmarks", default="auto",
                            help="corpus landmarks (stylerig corpus --landmarks): auto = the generator's own, else the "
                                 "offline detector (pip install 'stylerig[landmarks]'), else an error")
    everything.add_argument("--psi", type=float, default=0.8)
    everything.add_argument("--mixing", type=int, default=5,
                            help="style mixing: up to this many latents per corpus sample (1 = none). DFR must see "
                                 "layer-wise different latents to read each layer's meaning, as RigNet edits need")
    everything.add_argument("--modes", default=",".join(PAPER_MODES), help="comma-separated control modes")
    everything.add_argument("--dfr-steps", type=int, default=1500)
    everything.add_argument("--layer-code", type=int, default=64, help="DFR's per-W+-layer code width (0: flat MLP)")
    everything.add_argument("--reg", type=float, default=None, help="DFR's statistical regulariser weight")
    everything.add_argument("--distill-steps", type=int, default=500,
                            help="steps of DFR's second stage: a fresh, wider DFR learns the landmark fits started "
                                 "from the first stage's readings, without rendering (0: no second stage)")
    everything.add_argument("--distill", type=float, default=1.0, help="weight of the distillation term")
    everything.add_argument("--distill-lr", type=float, default=1e-3, help="learning rate of the second stage")
    everything.add_argument("--distill-batch", type=int, default=256, help="batch of the second stage")
    everything.add_argument("--distill-hidden", type=int, default=1024,
                            help="hidden width of the second stage's DFR (the one RigNets learn through)")
    everything.add_argument("--reader-rounds", type=int, default=1,
                            help="rounds of DFR and RigNets: each round after the first fine-tunes the render-free DFR "
                                 "on latents the previous round's RigNets edited (--edited-by) as well, then the "
                                 "RigNets through it, so that RigNets cannot exploit what DFR misreads (docs/rig.md)")
    everything.add_argument("--round-steps", type=float, default=0.5,
                            help="steps of each later round, as a fraction of --distill-steps and --rignet-steps")
    everything.add_argument("--shared-code", action="store_true",
                            help="RigNets whose layers all see the codes of all the mode's layers (docs/rig.md)")
    everything.add_argument("--rignet-steps", type=int, default=1000)
    everything.add_argument("--rignet-batch", type=int, default=None, help="RigNet batch (default: --batch)")
    everything.add_argument("--ramp-steps", type=int, default=None,
                            help="steps of each consistency ramp stage: the last round's expression and illumination "
                                 "RigNets fine-tuned with a stronger parameter consistency in steps (CONSISTENCY_RAMP; "
                                 f"default {RAMP_SHARE:g} × --rignet-steps; 0: no ramp)")
    everything.add_argument("--light-calibration", type=int, default=LIGHT_CALIBRATION_COUNT, metavar="N",
                            help="last stage: DFR's light calibrated on photometric fits of the first N corpus latents "
                                 "and their illumination edits (~3.3 s a fit on a CPU core), and the illumination "
                                 "RigNet fine-tuned through it (docs/rig.md item 13; default "
                                 f"{LIGHT_CALIBRATION_COUNT}; 0: none)")
    everything.add_argument("--eval-count", type=int, default=256)
    everything.add_argument("--ship", default=None, metavar="DIR",
                            help="also copy the trained networks (float16), configs and evaluation.json to DIR, "
                                 "e.g. stylerig_engine/data/rig/synthetic")
    everything.set_defaults(func=_train_all)
    for p in (rig, everything):
        p.add_argument("--key-edits", type=float, default=None, metavar="FRACTION",
                       help="share of each RigNet batch edited towards the face's own reading with a few controls "
                            "keyed, as an animator does (0: only the paper's edits towards another face; default 0.5 "
                            "for pose and expression, 0 otherwise; docs/rig.md)")
        p.add_argument("--rignet-loss", default=None, metavar="NAME=VALUE,...",
                       help="override RigNet loss weights, e.g. parameter_edit=1,parameter_consistency=1 (names: "
                            "RigNetLossWeights fields, see docs/rig.md)")

    ev = subparsers.add_parser("evaluate", help="measure a rig's control accuracy and drift on held-out latents")
    ev.add_argument("--rig", default=None, help="rig directory (default: the shipped synthetic-world rig)")
    ev.add_argument("--generator", default="synthetic:64")
    ev.add_argument("--count", type=int, default=256)
    ev.add_argument("--psi", type=float, default=0.8)
    ev.add_argument("--identity-model", default=None, metavar="py:MODULE:FACTORY",
                    help="face-recognition embedding for identity similarity (docs/rig.md)")
    ev.add_argument("--closed-loop", default=None, metavar="MODES",
                    help="also evaluate closed-loop editing (per-image fits as the sensor) for these comma-separated "
                         "modes, e.g. pose; slow: one fit of every latent per reading")
    ev.add_argument("--loop-iterations", type=int, default=4, help="closed loop: readings per edit")
    ev.add_argument("--fit-steps", type=int, default=400, help="closed loop: optimisation steps per fit")
    ev.add_argument("--json", default=None, help="write the full report here")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ev.set_defaults(func=_evaluate)

    rig_cmd = subparsers.add_parser("rig", help="maintain trained rig directories")
    rig_kinds = rig_cmd.add_subparsers(dest="rig_command", metavar="ACTION", required=True)
    stamp = rig_kinds.add_parser("stamp", help="record which generator a rig was trained for (checkpoints and "
                                 "configs), so that engines refuse it on any other generator")
    stamp.add_argument("directory", help="rig directory (dfr.safetensors, rignet-*.safetensors, *.config.json)")
    stamp.add_argument("--generator", required=True, help="the generator spec it was trained on, e.g. synthetic:64")
    stamp.set_defaults(func=_stamp)


def parse_layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    return sorted(set(out))


def parse_loss_weights(text: str, base, option: str = "--loss"):
    """"landmark=200,expression_reg=1e-5" -> base (a LossWeights or RigNetLossWeights) with those fields replaced."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(base)}
    changes = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in fields:
            raise ValueError(f"{option} {part!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(fields))}")
        try:
            changes[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{option} {part!r}: {value!r} is not a number") from None
    return dataclasses.replace(base, **changes)


def _set_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _config(args, net: str, **overrides):
    from .train import TrainConfig

    _set_threads(args)
    defaults = {"dfr": dict(steps=1500, lr=1e-3), "rignet": dict(steps=1000, lr=3e-4)}[net]
    kw = dict(net=net, out=args.out, batch=args.batch, seed=args.seed, tensorboard=args.tensorboard,
              device=args.device, model=args.model, steps=args.steps or defaults["steps"],
              lr=args.lr or defaults["lr"], lr_schedule=args.lr_schedule, lr_scaling=args.lr_scaling,
              precision=args.precision, compile=args.compile)
    from .losses import LossWeights

    weights = LossWeights()
    if net == "dfr":
        kw["layer_code"] = args.layer_code
        for name in ("hidden", "teacher", "render", "fits"):
            if hasattr(args, name):
                kw[name] = getattr(args, name)
        if getattr(args, "edited_by", None):
            kw.update(edited_by=args.edited_by, edited_share=args.edited_share,
                      edited_count=args.edited_count or _corpus_size(overrides["corpus"]) // 2)
        if args.reg is not None:
            weights = LossWeights.with_reg(args.reg)
    if getattr(args, "loss", None):
        weights = parse_loss_weights(args.loss, weights)
    kw["loss"] = asdict(weights)
    if getattr(args, "init", None):
        kw["init"] = args.init
    if net == "dfr" and getattr(args, "distill", None):
        kw["distill"] = args.distill
    if net == "rignet":
        from .losses import RigNetLossWeights

        text = getattr(args, "rignet_loss", None) or ""
        kw["rignet_loss"] = asdict(parse_loss_weights(text, RigNetLossWeights(), "--rignet-loss"))
        from .key_edits import DEFAULT_KEY_EDITS

        default = DEFAULT_KEY_EDITS.get(overrides.get("mode", ""), 0.0)  # the mode comes in the overrides
        kw["key_edits"] = default if args.key_edits is None else args.key_edits
    kw.update(overrides)
    return TrainConfig(**kw)


def _corpus_size(root: str) -> int:
    from ..corpus import Corpus

    return len(Corpus(root))


def _train_one(args) -> int:
    from .train import train

    extra = {}
    if args.net == "rignet":
        extra = dict(mode=args.mode, dfr=args.dfr, layers=parse_layers(args.layers), shared_code=args.shared_code)
    cfg = _config(args, args.net, corpus=args.corpus, **extra)
    path = train(cfg, resume=args.resume)
    print(f"wrote {path}")
    return 0


def _train_all(args) -> int:
    from ..corpus import CorpusConfig, CorpusError, build_corpus, resolve_generator, resolve_landmarks
    from .checkpoints import stamp_generator
    from .editing import load_rig
    from .evaluate import evaluate, format_table
    from .train import train

    if args.reader_rounds < 1 or (args.reader_rounds > 1 and not args.distill_steps) or \
            not 0 < args.round_steps <= 1:
        print("stylerig train all: error: --reader-rounds must be >= 1 (later rounds need --distill-steps) and "
              "--round-steps in (0, 1]", file=sys.stderr)
        return 2
    if args.light_calibration < 0 or args.light_calibration == 1:
        print(f"stylerig train all: error: --light-calibration must be 0 (none) or at least 2, got "
              f"{args.light_calibration}", file=sys.stderr)
        return 2
    if args.ramp_steps is not None and args.ramp_steps < 0:
        print(f"stylerig train all: error: --ramp-steps must be >= 0 (0: no consistency ramp), got {args.ramp_steps}",
              file=sys.stderr)
        return 2
    _set_threads(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generator = resolve_generator(args.generator)
    size = generator.img_resolution
    corpus_dir = out / "corpus"
    try:
        landmarks = resolve_landmarks(args.landmarks, generator)
        if landmarks == "none" and args.light_calibration and "illumination" in args.modes:
            raise CorpusError("--light-calibration needs the corpus's landmarks (its photometric fits); with "
                              "--landmarks none pass --light-calibration 0")
        build_corpus(CorpusConfig(generator=args.generator, count=args.count, size=size, psi=args.psi,
                                  mixing=args.mixing, seed=args.seed, landmarks=landmarks), corpus_dir,
                     generator=generator)
    except CorpusError as e:
        print(f"stylerig train all: error: {e}", file=sys.stderr)
        return 2
    # DFR: self-supervised, then (--distill-steps) a fresh, wider DFR regressed on landmark fits started from the
    # first one's readings (its teacher): no render, so many more samples per second (docs/rig.md)
    stage1 = out / "dfr-self-supervised" if args.distill_steps else out
    dfr_cfg = _config(args, "dfr", corpus=str(corpus_dir), steps=args.dfr_steps, out=str(stage1), distill=0.0)
    dfr_path = train(dfr_cfg, resume=args.resume or (stage1 / "dfr.safetensors").exists())
    if args.distill_steps:
        dfr_cfg = _config(args, "dfr", corpus=str(corpus_dir), steps=args.distill_steps, teacher=str(dfr_path),
                          distill=args.distill, lr=args.distill_lr, batch=args.distill_batch,
                          hidden=args.distill_hidden, render=False)
        dfr_path = train(dfr_cfg, resume=args.resume or (out / "dfr.safetensors").exists())
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rounds = [out] + [out / f"round-{r}" for r in range(2, args.reader_rounds + 1)]
    for r, where in enumerate(rounds):
        if r:  # the previous round's DFR, fine-tuned on its own landmark fits and on its RigNets' edits
            dfr_cfg = _config(args, "dfr", corpus=str(corpus_dir), out=str(where), teacher=str(dfr_path),
                              init=str(dfr_path), steps=max(1, round(args.round_steps * args.distill_steps)),
                              distill=args.distill, lr=args.distill_lr, batch=args.distill_batch,
                              hidden=args.distill_hidden, render=False, edited_by=str(rounds[r - 1]),
                              edited_count=args.count // 2, edited_share=EDITED_SHARE)
            dfr_path = train(dfr_cfg, resume=args.resume or (where / "dfr.safetensors").exists())
        for mode in modes:
            steps = max(1, round(args.round_steps * args.rignet_steps)) if r else args.rignet_steps
            init = {"init": str(rounds[r - 1] / f"rignet-{mode}.safetensors")} if r else {}
            cfg = _config(args, "rignet", corpus=str(corpus_dir), mode=mode, dfr=str(dfr_path), steps=steps,
                          batch=args.rignet_batch or args.batch, out=str(where), shared_code=args.shared_code, **init)
            train(cfg, resume=args.resume or (where / f"rignet-{mode}.safetensors").exists())
    final = {mode: rounds[-1] / f"rignet-{mode}.safetensors" for mode in modes}
    ramp_steps = max(1, round(RAMP_SHARE * args.rignet_steps)) if args.ramp_steps is None else args.ramp_steps
    for mode in modes if ramp_steps else ():
        for alpha in CONSISTENCY_RAMP.get(mode, ()):
            stage = out / "consistency-ramp" / f"{mode}-{alpha:g}"
            cfg = _config(args, "rignet", corpus=str(corpus_dir), mode=mode, dfr=str(dfr_path), steps=ramp_steps,
                          lr=RAMP_LR, batch=args.rignet_batch or args.batch, out=str(stage),
                          shared_code=args.shared_code, init=str(final[mode]))
            cfg = replace(cfg, rignet_loss={**cfg.rignet_loss, "parameter_consistency": alpha})
            final[mode] = train(cfg, resume=args.resume or (stage / f"rignet-{mode}.safetensors").exists())
    if args.light_calibration and "illumination" in final:
        dfr_path, final["illumination"] = _calibrate_light(args, out / "light-calibration", generator, landmarks,
                                                           corpus_dir, dfr_path, final["illumination"], ramp_steps)
    # the rig: the last round's networks, or, when later stages changed some of them, a directory of the final ones
    last = rounds[-1]
    out = last if all(p.parent == last for p in (dfr_path, *final.values())) else _assemble_rig(out / "rig", dfr_path,
                                                                                                  final)
    stamp_generator(out, generator, args.generator, configs=False)  # (--resume reads the configs as written)
    rig = load_rig(out)
    report = evaluate(rig, generator, count=args.eval_count, psi=args.psi)
    report["training"] = {"generator": args.generator, "corpus_count": args.count, "psi": args.psi,
                          "dfr_steps": args.dfr_steps, "distill_steps": args.distill_steps, "distill": args.distill,
                          "distill_batch": args.distill_batch, "distill_hidden": args.distill_hidden,
                          "rignet_steps": args.rignet_steps, "batch": args.batch,
                          "reader_rounds": args.reader_rounds, "round_steps": args.round_steps,
                          "shared_code": args.shared_code,
                          "consistency_ramp": {m: list(CONSISTENCY_RAMP[m]) for m in modes
                                               if ramp_steps and m in CONSISTENCY_RAMP},
                          "ramp_steps": ramp_steps, "light_calibration": args.light_calibration,
                          "rignet_batch": args.rignet_batch or args.batch, "mixing": args.mixing,
                          "seed": args.seed, "layer_code": args.layer_code, "lr": dfr_cfg.lr, "loss": dfr_cfg.loss,
                          "landmarks": landmarks,
                          "lr_schedule": args.lr_schedule, "lr_scaling": args.lr_scaling,
                          "precision": args.precision}
    with atomic_write(out / "evaluation.json", "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(report))
    if args.ship:
        ship_rig(out, Path(args.ship), modes)
        print(f"shipped the rig to {args.ship}")
    return 0


def _calibrate_light(args, stage: Path, generator, landmarks: str, corpus_dir: Path, dfr_path: Path,
                     rignet_path: Path, ramp_steps: int) -> tuple[Path, Path]:
    """train all's light stage (docs/rig.md, item 13): DFR's light calibrated on photometric fits of the first
    --light-calibration corpus latents and their illumination edits, then the illumination RigNet fine-tuned through
    it (a ramp stage's steps, at the ramp's last parameter consistency). Returns (DFR, RigNet) checkpoints."""
    import shutil

    from ..corpus.landmarks import make_detector
    from .checkpoints import load_network
    from .editing import Rig
    from .light_calibration import write_light_calibrated_dfr
    from .networks import DFR, RigNet
    from .train import train

    stage.mkdir(parents=True, exist_ok=True)
    calibrated = stage / "dfr.safetensors"
    if not (args.resume and calibrated.exists()):
        dfr, rignet = load_network(dfr_path, args.device), load_network(rignet_path, args.device)
        assert isinstance(dfr, DFR) and isinstance(rignet, RigNet)  # as train() wrote them
        rig = Rig(dfr, {"illumination": rignet})
        write_light_calibrated_dfr(rig, generator, corpus_dir, min(args.light_calibration, args.count), calibrated,
                                   source=dfr_path, landmarks=make_detector(landmarks, generator, args.device))
    shutil.copyfile(dfr_path.with_name("dfr.config.json"), stage / "dfr.config.json")
    steps = ramp_steps or max(1, round(RAMP_SHARE * args.rignet_steps))
    cfg = _config(args, "rignet", corpus=str(corpus_dir), mode="illumination", dfr=str(calibrated), steps=steps,
                  lr=RAMP_LR, batch=args.rignet_batch or args.batch, out=str(stage), shared_code=args.shared_code,
                  init=str(rignet_path))
    if ramp_steps and CONSISTENCY_RAMP.get("illumination"):
        cfg = replace(cfg, rignet_loss={**cfg.rignet_loss,
                                        "parameter_consistency": CONSISTENCY_RAMP["illumination"][-1]})
    return calibrated, train(cfg, resume=args.resume or (stage / "rignet-illumination.safetensors").exists())


def _assemble_rig(dest: Path, dfr: Path, rignets: dict[str, Path]) -> Path:
    """A rig directory of the given checkpoints (copied with their configs): DFR and one RigNet per mode."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for path in [dfr, *rignets.values()]:
        for source in (path, path.with_name(path.name.replace(".safetensors", ".config.json"))):
            shutil.copyfile(source, dest / source.name)
    return dest


def ship_rig(run: Path, dest: Path, modes: list[str]) -> None:
    """Copy a trained rig for distribution: weights in float16 (half the size; edits change by < 1e-3 of a
    latent's std), the training configs and the evaluation report, with the identity of the generator it was
    trained for (checkpoints.read_generator) in both."""
    import torch

    from .checkpoints import load_network, read_generator, save_network

    dest.mkdir(parents=True, exist_ok=True)
    identity = read_generator(run)
    for name in ["dfr"] + [f"rignet-{m}" for m in modes]:
        net = load_network(run / f"{name}.safetensors")
        save_network(net, dest / f"{name}.safetensors", dtype=torch.float16, extra={"shipped_from": str(run)},
                     generator=identity)
        config = json.loads((run / f"{name}.config.json").read_text())
        if identity is not None:
            config["generator"] = identity
        with atomic_write(dest / f"{name}.config.json", "w") as f:
            json.dump(config, f, indent=1)
    with atomic_write(dest / "evaluation.json", "w") as f:
        f.write((run / "evaluation.json").read_text())


def _light_calibration(args) -> int:
    from ..corpus import CorpusConfigError, resolve_generator, resolve_landmarks
    from ..corpus.landmarks import make_detector
    from .editing import load_rig
    from .light_calibration import LIGHT_CALIBRATION_RIDGE, write_light_calibrated_dfr
    from .train import init_distributed

    _set_threads(args)
    rank, _, device = init_distributed(args.device)  # under torchrun every rank fits every world-th chunk
    try:
        rig = load_rig(args.rig, device)
        generator = resolve_generator(args.generator, device=device)
        detector = make_detector(resolve_landmarks(args.landmarks, generator), generator, device)
        if detector is None:
            raise ValueError("--landmarks none: the calibration's photometric fits need landmarks")
        out = write_light_calibrated_dfr(rig, generator, args.corpus, args.count, args.out,
                                         ridge=LIGHT_CALIBRATION_RIDGE if args.ridge is None else args.ridge,
                                         source=Path(args.rig) / "dfr.safetensors", landmarks=detector,
                                         write=rank == 0)
    except (OSError, ValueError, CorpusConfigError) as e:
        print(f"stylerig train light-calibration: error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"wrote {out} (DFR's light calibrated on photometric fits of {args.count} corpus latents and their "
              "edits)")
    return 0


def _evaluate(args) -> int:
    from ..corpus import CorpusConfigError, resolve_generator
    from .editing import load_rig
    from .evaluate import evaluate, format_table, load_identity_model

    _set_threads(args)
    rig = load_rig(args.rig, args.device)
    generator = resolve_generator(args.generator, device=args.device)
    try:
        identity_model = load_identity_model(args.identity_model, args.device) if args.identity_model else None
    except ValueError as e:
        print(f"stylerig evaluate: error: {e}", file=sys.stderr)
        return 2
    loop_modes = [m.strip() for m in args.closed_loop.split(",") if m.strip()] if args.closed_loop else None
    unknown = sorted(set(loop_modes or ()) - set(rig.modes))
    if unknown:
        print(f"stylerig evaluate: error: --closed-loop {','.join(unknown)}: the rig has RigNets for {rig.modes}",
              file=sys.stderr)
        return 2
    reader = None
    if loop_modes:
        from .fitting import ImageReader

        try:
            reader = ImageReader(rig, generator, steps=args.fit_steps)
        except CorpusConfigError as e:  # a generator without landmarks
            print(f"stylerig evaluate: error: closed-loop editing needs landmarks: {e}", file=sys.stderr)
            return 2
    report = evaluate(rig, generator, count=args.count, psi=args.psi, identity_model=identity_model,
                      closed_loop=reader, loop_iterations=args.loop_iterations, loop_modes=loop_modes)
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(format_table(report))
    return 0


def _stamp(args) -> int:
    from ..engine import load_generator
    from .checkpoints import stamp_generator

    identity = stamp_generator(args.directory, load_generator(args.generator), args.generator)
    print(f"{args.directory}: trained for {identity['name']} (W+ {identity['num_ws']} x {identity['w_dim']}, "
          f"{identity['hash_of']} sha256 {identity['weights_sha256']})")
    return 0


__all__ = ["register", "parse_layers"]
