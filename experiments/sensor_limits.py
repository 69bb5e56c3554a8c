"""What holds the whole-expression and illumination edits back: the actuator (RigNet) or the sensor (the reader)?
(docs/rig.md, item 12.) Four measurements on held-out faces of the synthetic world, with their exact parameters:

1. `oracle`: the shipped RigNets corrected by an exact sensor (the world's true parameters in place of DFR,
   editing.corrected_edit, the last edit kept as the live path does): how close the actuator can be steered.
2. `bands`: the shipped illumination edit's and DFR's light error split by SH band (L0 ambient, L1 directional,
   L2), with each band replaced by the target's, and after the best per-channel scale (the albedo–light ambiguity:
   k × albedo under light / k renders the same face, so that part of the error no image shows).
3. `valley`: that ambiguity measured: the photometric change of the face along it, and where the layout's prior
   puts a reader that uses it perfectly (the maximum a posteriori scale).
4. `sensors`: how exactly each available sensor reads plain and edited faces: DFR, fitting.fit_photometric (the
   final renders' sensor, ImageReader, and distillation's targets) and the fit the targets used before.
5. `light-solve`: a cheap light reader: the light that best explains the image in closed form (the image is linear
   in the SH coefficients once geometry and albedo are fixed), given landmark-fit or true geometry and albedo.
6. `light-visibility`: which combinations of the 27 coefficients a face shows (the SH basis's Gram matrix over the
   faces' camera-facing normals, in prior σ), the world's light spread against the prior, each sensor's mean light
   error (its bias) and how it lies along the least visible combination, and the light direction (the L1 band's
   direction, what an animator sets a sun by) of the edit and of the readings in degrees.
7. `light-calibration`: DFR's light re-read by an affine map learned from fit_photometric's readings of other faces
   (plain and illumination-edited; no truth, as a real generator allows), and that reader as the live edit's
   corrector.

    .venv/bin/python experiments/sensor_limits.py oracle [--count 128]       # ~2 min on one core
    .venv/bin/python experiments/sensor_limits.py bands [--count 256]        # ~1 min
    .venv/bin/python experiments/sensor_limits.py valley [--count 128]       # ~9 min
    .venv/bin/python experiments/sensor_limits.py sensors [--count 48]       # ~10 min
    .venv/bin/python experiments/sensor_limits.py light-solve [--count 256]  # ~3 min
    .venv/bin/python experiments/sensor_limits.py light-visibility [--count 128]  # ~7 min
    .venv/bin/python experiments/sensor_limits.py light-calibration [--count 128] [--corpus DIR --train 320]  # ~45 min
"""

from __future__ import annotations

import argparse

import torch

from stylerig_engine.params import SH_NAMES
from stylerig_engine.render.face import FaceRenderer
from stylerig_engine.render.shading import sh_basis, srgb_to_linear
from stylerig_engine.rig import load_rig
from stylerig_engine.rig.editing import corrected_edit
from stylerig_engine.rig.evaluate import (HELD_OUT_SEED, ObservableErrors, block_errors, expression_correlation,
                                          sample_latents)
from stylerig_engine.rig.fitting import ImageReader, fit_landmarks, fit_parameters
from stylerig_engine.rig.light_calibration import (fold_light_calibration, light_calibration_fits,
                                                   solve_light_calibration)
from stylerig_engine.rig.losses import FaceLoss, LossWeights, region_model, to_generator_space
from stylerig_engine.synthetic import make_synthetic

BANDS = {"L0": [0], "L1": [1, 2, 3], "L2": [4, 5, 6, 7, 8]}  # SH coefficients of each band (params.SH_NAMES)
RIG: str | None = None  # --rig: the rig directory measured (default: the shipped one)


def _faces(world, count: int):
    with torch.no_grad():
        ws = sample_latents(world, count, HELD_OUT_SEED, 0.8)
        truth = world.true_params(ws)
    return ws, truth, truth.roll(1, 0)  # each face's target: the next face's parameters (as `evaluate`)


def _light(layout, p: torch.Tensor) -> torch.Tensor:
    """(B, 9, 3) SH coefficients in prior standard deviations."""
    std = torch.as_tensor(layout.prior_std)[layout.slice("illumination")].reshape(1, 9, 3)
    return layout.split(p)["illumination"].reshape(-1, 9, 3) / std


def _with_light(layout, p: torch.Tensor, light_sigma: torch.Tensor) -> torch.Tensor:
    std = torch.as_tensor(layout.prior_std)[layout.slice("illumination")].reshape(1, 9, 3)
    out = p.clone()
    out[:, layout.slice("illumination")] = (light_sigma * std).reshape(len(p), 27).to(p.dtype)
    return out


def best_scaled(layout, p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """p with its light scaled per channel by the factor that brings it closest to target's (in prior σ)."""
    a, b = _light(layout, p), _light(layout, target)
    return _with_light(layout, p, a * (a * b).sum(1, keepdim=True) / a.square().sum(1, keepdim=True).clamp_min(1e-12))


def oracle(world, count: int) -> None:
    layout, rig = world.layout, load_rig(RIG)
    observable = ObservableErrors(world.model, layout)
    ws, truth, target = _faces(world, count)

    def actuate(w, commands):  # RigNet alone: the sensor below replaces DFR's corrections
        return rig.edit_many(w, commands, corrections={})

    print(f"shipped RigNets corrected by an exact sensor, {count} faces "
          "(medians; drift: mean over the other blocks, σ)")
    with torch.no_grad():
        for mode in ("expression", "illumination"):
            for iterations in (0, 2, 4):
                w_hat = corrected_edit(actuate, world.true_params, layout, ws, {mode: target}, iterations=iterations,
                                       keep_best=False)
                p = world.true_params(w_hat)
                drift = block_errors(layout, p, truth)
                others = [float(e.mean()) for b, e in drift.items() if b not in (mode, "rotation")]
                seen = (f"{float(observable.expression_mm(p, target).median()):.2f} mm" if mode == "expression" else
                        f"shading {100 * float(observable.shading(p, target).median()):.1f} %")
                print(f"  {mode}, {iterations} corrections: {float(block_errors(layout, p, target)[mode].median()):.3f}"
                      f" σ, {seen}, drift {sum(others) / len(others):.3f}")


def bands(world, count: int) -> None:
    layout, rig = world.layout, load_rig(RIG)
    observable = ObservableErrors(world.model, layout)
    ws, truth, target = _faces(world, count)
    with torch.no_grad():
        rows = {"DFR's reading": (rig.fit(ws), truth),
                "illumination edit (live)": (world.true_params(rig.edit(ws, "illumination", target)), target)}
        naive = ws.clone()
        layers = list(rig.rignets["illumination"].layers)
        naive[:, layers] = ws.roll(1, 0)[:, layers]
        rows["naive layer copy"] = (world.true_params(naive), target)
    print(f"light error, {count} faces (medians): whole (σ), per band (RMSE σ), shading; and with one band exact")
    for name, (p, ref) in rows.items():
        d = _light(layout, p) - _light(layout, ref)
        per_band = ", ".join(f"{b} {float(d[:, i].square().mean((1, 2)).sqrt().median()):.2f}"
                             for b, i in BANDS.items())
        fixed = []
        for b, i in BANDS.items():
            light = _light(layout, p).clone()
            light[:, i] = _light(layout, ref)[:, i]
            q = _with_light(layout, p, light)
            fixed.append(f"{b} exact {float(block_errors(layout, q, ref)['illumination'].median()):.2f} σ / "
                         f"{100 * float(observable.shading(q, ref).median()):.1f} %")
        s = best_scaled(layout, p, ref)
        print(f"  {name}: {float(block_errors(layout, p, ref)['illumination'].median()):.2f} σ ({per_band}), shading "
              f"{100 * float(observable.shading(p, ref).median()):.1f} %; {'; '.join(fixed)}; best scale "
              f"{float(block_errors(layout, s, ref)['illumination'].median()):.2f} σ / "
              f"{100 * float(observable.shading(s, ref).median()):.1f} %")


def rescaled(renderer: FaceRenderer, pinv: torch.Tensor, layout, p: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """p with each channel's albedo scaled by k (B, 3) (least squares in the albedo basis, pinv its pseudo-inverse)
    and its light by 1 / k."""
    basis = renderer.albedo_basis.double()  # (K, V*3), channel-minor
    mean = renderer.albedo_mean.double().reshape(1, -1)
    albedo = mean + layout.split(p)["albedo"].double() @ basis  # unclamped
    wanted = k.double().repeat(1, basis.shape[1] // 3) * albedo - mean
    out = p.double().clone()
    out[:, layout.slice("albedo")] = wanted @ pinv
    out[:, layout.slice("illumination")] = (layout.split(p)["illumination"].double().reshape(-1, 9, 3)
                                            / k.double()[:, None, :]).reshape(-1, 27)
    return out.to(p.dtype)


def valley(world, count: int) -> None:
    layout = world.layout
    renderer = FaceRenderer(world.model, layout, image_size=64)
    pinv = torch.linalg.pinv(renderer.albedo_basis.double())
    observable = ObservableErrors(world.model, layout)
    ws, truth, target = _faces(world, count)
    with torch.no_grad():
        rendered = renderer(truth)
    base, face = to_generator_space(rendered.image), rendered.mask.expand(-1, 3, -1, -1) > 0.5
    print(f"{count} faces: albedo × k, light / k (every channel); change of the face pixels ([-1, 1] units)")
    for s in (0.8, 0.9, 1.1, 1.25):
        with torch.no_grad():
            q = rescaled(renderer, pinv, layout, truth, torch.full((count, 3), s))
            diff = (to_generator_space(renderer(q).image) - base).abs()[face]
        moved = block_errors(layout, q, truth)
        print(f"  k = {s}: mean {float(diff.mean()):.4f} (largest {float(diff.amax()):.3f}); light moved "
              f"{float(moved['illumination'].median()):.2f} σ, shading "
              f"{100 * float(observable.shading(q, truth).median()):.1f} %, albedo "
              f"{float(moved['albedo'].median()):.2f} σ")
    log_k = torch.zeros(count, 3, dtype=torch.float64, requires_grad=True)  # the prior's choice along the valley
    optimizer = torch.optim.Adam([log_k], lr=0.02)
    for _ in range(300):
        z = layout.normalise(rescaled(renderer, pinv, layout, truth.double(), log_k.exp()))
        energy = sum(z[:, layout.slice(b)].square().sum() for b in ("albedo", "illumination"))
        optimizer.zero_grad()
        energy.backward()
        optimizer.step()
    k = log_k.detach().exp()
    with torch.no_grad():
        best = rescaled(renderer, pinv, layout, truth, k)
        diff = (to_generator_space(renderer(best).image) - base).abs()[face]
    light = block_errors(layout, best, truth)["illumination"]
    print(f"  the prior's scale: k median {[round(x, 2) for x in k.median(0).values.tolist()]}; face change "
          f"{float(diff.mean()):.4f}; light read {float(light.median()):.2f} σ, shading "
          f"{100 * float(observable.shading(best, truth).median()):.1f} %")


# The photometric fit the distillation table used before item 12: a landmark fit, then 200 steps with the landmark
# fit's priors and a weak albedo prior.
EARLIER_FIT_WEIGHTS = LossWeights(photometric=1.0, landmark=200.0, identity_reg=1e-4, albedo_reg=1e-5,
                                  expression_reg=1e-6)


def sensors(world, count: int) -> None:
    layout, rig = world.layout, load_rig(RIG)
    observable = ObservableErrors(world.model, layout)
    reader = ImageReader(rig, world)  # fit_photometric from DFR's reading: the final renders' sensor
    renderer = reader.renderer

    def earlier(ws: torch.Tensor) -> torch.Tensor:
        images, landmarks = reader.observe(ws)
        geometry = fit_landmarks(renderer, landmarks, rig.fit(ws))
        return fit_parameters(FaceLoss(renderer, EARLIER_FIT_WEIGHTS), images, landmarks, geometry, steps=200,
                              clamp=True)

    ws, _, target = _faces(world, count)
    with torch.no_grad():
        faces = {"plain": ws, "light edited": rig.edit(ws, "illumination", target),
                 "expression edited": rig.edit(ws, "expression", target)}
    print(f"each sensor's reading against the truth, {count} faces (medians); correlations: plain faces, the 20 "
          "blendshapes that vary most")
    for name, read in (("DFR", rig.fit), (f"fit_photometric, {reader.steps} steps", reader),
                       ("the earlier fit (landmarks, then 200 steps)", earlier)):
        for kind, w in faces.items():
            p, truth = read(w), world.true_params(w)
            e, seen = block_errors(layout, p, truth), observable(p, truth)
            print(f"  {name}, {kind}: rotation {float(e['rotation'].median()):.2f}°, expression "
                  f"{float(e['expression'].median()):.2f} σ ({float(seen['expression_mm'].median()):.2f} mm), light "
                  f"{float(e['illumination'].median()):.2f} σ ({100 * float(seen['shading'].median()):.1f} %)")
            if kind == "plain":
                print("    " + ", ".join(f"{k} {v:.2f}" for k, v in expression_correlation(layout, p, truth).items()))


def light_solve(world, count: int) -> None:
    layout, rig = world.layout, load_rig(RIG)
    observable = ObservableErrors(world.model, layout)
    renderer = FaceRenderer(region_model(world.model), layout, image_size=64)
    ws, truth, _ = _faces(world, count)
    with torch.no_grad():
        images, landmarks, read = world.synthesis(ws), world.landmarks(ws), rig.fit(ws)
    geometry = fit_landmarks(renderer, landmarks, read)
    seen = srgb_to_linear((images.double() + 1) / 2)
    light = layout.slice("illumination")

    def solve(p: torch.Tensor) -> torch.Tensor:
        """The least-squares light of each face and channel given p's geometry and albedo (9 renders, one per SH
        coefficient; unsaturated face-skin pixels)."""
        columns = []
        with torch.no_grad():
            for k in range(9):
                unit = torch.zeros(len(p), 9, 3)
                unit[:, k] = 1
                q = p.clone()
                q[:, light] = unit.reshape(len(p), 27)
                out = renderer(q)
                columns.append(out.image.double())
        x = torch.stack(columns, 1)  # (B, 9, 3, H, W)
        use = ((out.mask[:, 0] > 0.5) & (seen.amax(1) < 0.98) & (seen.amin(1) > 0.002))[:, None, None].double()
        gram = torch.einsum("bkchw,bjchw->bckj", x * use, x)
        rhs = torch.einsum("bkchw,bchw->bck", x * use, seen)
        out = p.clone()
        out[:, light] = torch.linalg.solve(gram, rhs).transpose(1, 2).reshape(len(p), 27).to(p.dtype)
        return out

    def swap(p: torch.Tensor, block: str) -> torch.Tensor:
        q = p.clone()
        q[:, layout.slice(block)] = truth[:, layout.slice(block)]
        return q

    true_geometry = truth.clone()
    true_geometry[:, layout.slice("albedo")] = geometry[:, layout.slice("albedo")]
    print(f"light read by a closed-form solve, {count} faces (medians)")
    for name, p in (("DFR's reading (no solve)", read), ("landmark-fit geometry, DFR's albedo", solve(geometry)),
                    ("landmark-fit geometry, true albedo", solve(swap(geometry, "albedo"))),
                    ("true geometry, DFR's albedo", solve(true_geometry)), ("true geometry and albedo", solve(truth))):
        print(f"  {name}: {float(block_errors(layout, p, truth)['illumination'].median()):.2f} σ, shading "
              f"{100 * float(observable.shading(p, truth).median()):.1f} %")


def light_visibility(world, count: int) -> None:
    layout, rig = world.layout, load_rig(RIG)
    observable = ObservableErrors(world.model, layout)
    ws, truth, target = _faces(world, count)
    reader = ImageReader(rig, world)
    std = torch.as_tensor(layout.prior_std)[layout.slice("illumination")].reshape(9, 3)[:, 0].double()
    normals = reader.renderer.geometry(truth)[1].reshape(-1, 3).double()
    area = normals[:, 2].clamp(min=0)  # a vertex's share of the image: facing the camera
    basis = sh_basis(normals) * std  # the image change per prior σ of each coefficient
    values, vectors = torch.linalg.eigh((basis * area[:, None]).T @ basis / area.sum())
    print(f"what {count} faces show of the light (camera-facing normals; image variance per σ², weakest first): "
          + ", ".join(f"{float(v):.1e}" for v in values))
    for k in range(3):
        entries = [f"{n} {float(c):+.2f}" for n, c in zip(SH_NAMES, vectors[:, k]) if abs(c) >= 0.1]
        print(f"  weak combination {k + 1}: " + ", ".join(entries))
    with torch.no_grad():
        spread = layout.split(world.true_params(sample_latents(world, 4096, HELD_OUT_SEED + 1, 0.8)))["illumination"]
    spread = spread.reshape(-1, 9, 3)
    print("the world's light (4,096 faces; mean of the channels) against the prior:")
    print("  mean " + ", ".join(f"{n} {float(m):.3f}" for n, m in zip(SH_NAMES, spread.mean((0, 2)))))
    print("  std  " + ", ".join(f"{n} {float(v):.3f} (prior {float(s):.2f})"
                                for n, v, s in zip(SH_NAMES, spread.std(0).mean(1), std)))
    with torch.no_grad():
        edited = rig.edit(ws, "illumination", target)
        naive = ws.clone()
        layers = list(rig.rignets["illumination"].layers)
        naive[:, layers] = ws.roll(1, 0)[:, layers]
        rows = {"no edit": (truth, target), "illumination edit (live)": (world.true_params(edited), target),
                "naive layer copy": (world.true_params(naive), target), "DFR's reading": (rig.fit(ws), truth)}
    rows["fit_photometric's reading"] = (reader(ws), truth)
    weakest = vectors[:, 0]
    print(f"mean light error (bias, mean of the channels) and light direction error, {count} faces:")
    for name, (p, ref) in rows.items():
        bias = (layout.split(p - ref)["illumination"].reshape(-1, 9, 3)).mean((0, 2)).double()
        along = float((bias / std) @ weakest / (bias / std).norm().clamp_min(1e-12))
        angle = observable.light_direction_deg(p, ref)
        print(f"  {name}: direction {float(angle.median()):.1f}° (p90 {float(angle.quantile(0.9)):.1f}°); bias "
              + ", ".join(f"{n} {float(b):+.3f}" for n, b in zip(SH_NAMES, bias))
              + f"; cosine with the weakest combination {along:+.2f}")


def light_calibration(world, count: int, train: int, corpus: str | None) -> None:
    import tempfile
    from pathlib import Path

    layout, rig = world.layout, load_rig(RIG)
    with torch.no_grad():  # the calibration's faces: never the held-out ones
        if corpus:
            import numpy as np

            from stylerig_engine.corpus.dataset import Corpus
            ws = torch.from_numpy(Corpus(corpus).read_rows(np.arange(train), names=("ws",))["ws"]).float()
        else:
            ws = sample_latents(world, train, HELD_OUT_SEED + 2, 0.8)
    with tempfile.TemporaryDirectory() as cache:  # the fits of ws and of their illumination edits
        table = light_calibration_fits(rig, world, ws, Path(cache) / "fits.safetensors")
    calibrated = fold_light_calibration(rig.dfr, solve_light_calibration(layout, table["readings"], table["fits"]))

    observable = ObservableErrors(world.model, layout)
    faces, truth, target = _faces(world, count)
    print(f"DFR's light calibrated on fit_photometric's readings of {len(table['fits'])} other faces (half of them "
          f"illumination-edited), {count} held-out faces (medians):")
    with torch.no_grad():
        edited = rig.edit(faces, "illumination", target)
        for kind, w in (("plain", faces), ("illumination-edited", edited)):
            p_true = world.true_params(w)
            for name, read in (("DFR", rig.fit), ("calibrated DFR", calibrated)):
                p = read(w)
                error = float(block_errors(layout, p, p_true)["illumination"].median())
                print(f"  {name}, {kind}: light {error:.3f} σ, shading "
                      f"{100 * float(observable.shading(p, p_true).median()):.1f} %")
        print("  the illumination edit corrected by each reader:")
        for name, read, iterations in (("RigNet alone", rig.fit, 0), ("DFR", rig.fit, 2), ("DFR", rig.fit, 4),
                                       ("calibrated DFR", calibrated, 2), ("calibrated DFR", calibrated, 4)):
            w = corrected_edit(rig.edit_many, read, layout, faces, {"illumination": target}, iterations=iterations)
            p = world.true_params(w)
            drift = block_errors(layout, p, truth)
            others = [float(e.mean()) for b, e in drift.items() if b not in ("illumination", "rotation")]
            error = float(block_errors(layout, p, target)["illumination"].median())
            shading = 100 * float(observable.shading(p, target).median())
            print(f"    {name}, {iterations} corrections: {error:.3f} σ, shading {shading:.1f} %, drift "
                  f"{sum(others) / len(others):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("oracle", "bands", "valley", "sensors", "light-solve", "light-visibility",
                                         "light-calibration"))
    parser.add_argument("--count", type=int, default=None, help="held-out faces (defaults in the usage above)")
    parser.add_argument("--rig", default=None, help="rig directory (default: the shipped rig; docs/rig.md's figures "
                                                    "for items 12 and 13 are the rig of git ba40d79, before the light "
                                                    "stage)")
    parser.add_argument("--train", type=int, default=320, help="light-calibration: faces it learns from (each also "
                                                               "edited)")
    parser.add_argument("--corpus", default=None, help="light-calibration: take them from this corpus (default: "
                                                       "latents of another seed)")
    args = parser.parse_args()
    global RIG
    RIG = args.rig
    torch.manual_seed(0)
    world = make_synthetic("synthetic:64")
    run = {"oracle": (oracle, 128), "bands": (bands, 256), "valley": (valley, 128), "sensors": (sensors, 48),
           "light-solve": (light_solve, 256), "light-visibility": (light_visibility, 128)}
    if args.what == "light-calibration":
        light_calibration(world, args.count or 128, args.train, args.corpus)
        return
    fn, count = run[args.what]
    fn(world, args.count or count)


if __name__ == "__main__":
    main()
