"""Evaluation of a rig (DFR + RigNets) on held-out latents.

On the synthetic world every number is exact (the generator's true_params). On other generators the same
edits are measured through DFR re-estimation and labelled "self-estimated".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..params import CONTROL_MODES, rotation_matrix
from .editing import Rig
from .fitting import closed_loop_edit
from .networks import RigNet

HELD_OUT_SEED = 1_000_003  # latents for evaluation never come from corpus seeds (those are hashed from 0..)

# What an animator keys alone on a face, each a group of blendshapes set together (left and right sides).
ANIMATOR_KEYS: dict[str, tuple[str, ...]] = {
    "smile": ("mouthSmile_L", "mouthSmile_R"),
    "blink": ("eyeBlink_L", "eyeBlink_R"),
    "jawOpen": ("jawOpen",),
    "browInnerUp": ("browInnerUp_L", "browInnerUp_R"),
    "mouthPucker": ("mouthPucker",),
    "eyeWide": ("eyeWide_L", "eyeWide_R"),
}
KEY_PERCENTILE = 99  # each key is set to the value the world itself reaches at this percentile
YAW_SWEEP_DEG = (-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0)


def rotation_error_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, 3), (B, 3) Euler angles -> (B,) geodesic angle between the two rotations, degrees."""
    r = rotation_matrix(a.double()).transpose(-1, -2) @ rotation_matrix(b.double())
    cos = ((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos)).float()


def block_errors(layout, p: torch.Tensor, q: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample error of every block: rotation in degrees, others RMSE in prior standard deviations."""
    zp, zq = layout.normalise(p), layout.normalise(q)
    out = {}
    for block, _ in layout.sizes:
        s = layout.slice(block)
        if block == "rotation":
            out[block] = rotation_error_deg(p[:, s], q[:, s])
        else:
            out[block] = (zp[:, s] - zq[:, s]).square().mean(1).sqrt()
    return out


class ObservableErrors:
    """Errors in what an image shows, for blocks whose coefficients are not identifiable one by one.

    Expression: RMS displacement (mm) between the two expressions' geometry over the face-skin vertices of
    the neutral face, ‖Σ_k (e_k − e'_k) B_k‖; many blendshape mixes give nearly the same face, which the
    per-weight RMSE counts as error. Illumination: RMS difference of the irradiance on the neutral face's
    skin normals (frontal pose), relative to the mean irradiance of the second; a global ambient change can
    be traded for a skin-tone change (albedo-light ambiguity), so it is measured where light shows. And the
    angle between the two lights' directions, what an animator aims a sun by: the direction of the L1 band
    (the irradiance's gradient; for one distant light plus ambient, the light's direction) of the channels' mean.
    """

    def __init__(self, model, layout):
        from ..render.shading import vertex_normals

        skin = torch.as_tensor(model.regions["face_skin"])
        self.layout = layout
        self.expression_basis = torch.as_tensor(model.expression_basis)[:, skin].double()  # (K, V_skin, 3)
        normals = vertex_normals(torch.as_tensor(model.neutral)[None], torch.as_tensor(model.triangles).long())[0]
        self.normals = normals[skin].double()  # (V_skin, 3)

    def expression_mm(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        de = self.layout.split(p - q)["expression"].double().cpu()
        offsets = torch.einsum("bk,kvc->bvc", de, self.expression_basis)
        return (10 * offsets.norm(dim=-1).square().mean(1).sqrt()).float()

    def shading(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        from ..render.shading import sh_coefficients, sh_shade

        a, b = (sh_shade(self.normals[None],
                         sh_coefficients(self.layout.split(x)["illumination"].double().cpu())[:, None])
                for x in (p, q))
        return ((a - b).square().mean((1, 2)).sqrt() / b.mean((1, 2)).abs().clamp_min(1e-6)).float()

    def light_direction(self, p: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, 3) unit direction of the light's L1 band, (x, y, z) in the model frame."""
        band1 = self.layout.split(p)["illumination"].double().cpu().reshape(-1, 9, 3)[:, 1:4].mean(2)
        v = band1[:, [2, 0, 1]]  # stored as the basis H_1..3 = C1 y, C1 z, C1 x
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def light_direction_deg(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        cosine = (self.light_direction(p) * self.light_direction(q)).sum(-1).clamp(-1.0, 1.0)
        return torch.rad2deg(torch.acos(cosine)).float()

    def __call__(self, p: torch.Tensor, q: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: getattr(self, key)(p, q) for key in ("expression_mm", "shading", "light_direction_deg")}


# mode -> the ObservableErrors methods that measure its control
OBSERVABLE_OF = {"expression": ("expression_mm",), "illumination": ("shading", "light_direction_deg")}


def load_identity_model(spec: str, device: str | torch.device = "cpu"):
    """A face-recognition embedding for the identity-similarity metric, from "py:package.module:factory":
    factory() (or factory(device=...)) returns a callable mapping generator images (B, 3, H, W) in [-1, 1] to
    embeddings (B, D); it does its own resizing and cropping (docs/rig.md shows one for facenet-pytorch)."""
    from ..pyspec import import_spec, takes_keyword

    factory = import_spec(spec)
    model = factory(device=device) if takes_keyword(factory, "device") else factory()
    if not callable(model):
        raise ValueError(f"identity model {spec!r}: the factory returned {type(model).__name__}, not a callable")
    return model.to(device).eval() if isinstance(model, torch.nn.Module) else model


def _embed(model, generator, ws: torch.Tensor, batch: int) -> torch.Tensor:
    out = []
    for i in range(0, len(ws), batch):
        e = model(generator.synthesis(ws[i:i + batch]))
        if not isinstance(e, torch.Tensor) or e.ndim != 2 or len(e) != len(ws[i:i + batch]):
            raise ValueError(f"the identity model must return (B, D) embeddings, got "
                             f"{tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__}")
        out.append(e.float())
    return torch.cat(out)


def _summary(x: torch.Tensor) -> dict[str, float]:
    x = x.double()
    return {"median": float(x.median()), "mean": float(x.mean()), "p90": float(torch.quantile(x, 0.9))}


def sample_latents(generator, count: int, seed: int, psi: float) -> torch.Tensor:
    z = torch.from_numpy(np.random.RandomState(seed).randn(count, generator.z_dim)).float()
    with torch.no_grad():
        return generator.mapping(z.to(generator.w_avg.device), psi=psi)


@torch.no_grad()
def evaluate(rig: Rig, generator, *, count: int = 256, psi: float = 0.7, seed: int = HELD_OUT_SEED,
             batch: int = 32, image_metrics: bool = True, identity_model=None, closed_loop=None,
             loop_iterations: int = 4, loop_modes=None) -> dict:
    """Metrics of DFR and of every loaded RigNet, with the "no edit" and "naive latent interpolation"
    baselines. Keyword args:
      count: held-out latents (targets are the parameters of another held-out latent each).
      psi: truncation of the held-out latents (use the corpus's).
      seed: seed of the held-out latents.
      batch: latents per generator call for the image metric.
      image_metrics: also measure the image change outside the face (needs rendering).
      identity_model: a face-recognition embedding (load_identity_model); adds the cosine similarity of the
        embeddings of I_w and I_ŵ (1 = same identity) to every row.
      closed_loop: a fitting.ImageReader; adds a "closed_loop" row (fitting.closed_loop_edit) for loop_modes
        (default: every mode), with loop_iterations readings. Costs one per-image fit per reading.
    """
    exact = hasattr(generator, "true_params")
    truth = generator.true_params if exact else rig.fit
    layout = rig.layout
    device = next(rig.parameters()).device
    w = sample_latents(generator, count, seed, psi).to(device)
    v = w.roll(1, 0)
    p_w, p_v = truth(w), truth(v)
    fitted = rig.fit(w)  # DFR's reading of w: its error (exact generators) and the reconstruction target
    report: dict = {"generator": type(generator).__name__, "count": count, "psi": psi, "seed": seed,
                    "estimate": "exact (true_params)" if exact else "self-estimated (DFR re-estimation)",
                    "live_corrections": dict(rig.corrections)}
    observable = ObservableErrors(generator.model, layout) if exact and hasattr(generator, "model") else None
    if exact:
        report["dfr"] = {b: _summary(e) for b, e in block_errors(layout, fitted, p_w).items()}
        if observable is not None:
            report["dfr_observable"] = {k: _summary(e) for k, e in observable(fitted, p_w).items()}
        report["reader"] = reader_report(rig.fit, generator, count=max(count, 1024), psi=psi, seed=seed)
    reference = _embed(identity_model, generator, w, batch) if identity_model is not None else None
    report["modes"] = {}
    for mode in rig.modes:
        net: RigNet = rig.rignets[mode]  # type: ignore[assignment]  # ModuleDict items are RigNets
        blocks = CONTROL_MODES[mode]
        naive = w.clone()
        idx = list(net.layers)
        naive[:, idx] = v[:, idx]
        rows = {}
        edits = [("rignet", rig.edit(w, mode, p_v, corrections={}))]  # RigNet alone
        if rig.corrections.get(mode, 0):
            edits.append(("live", rig.edit(w, mode, p_v)))  # RigNet with DFR's corrections (editing.py)
        if closed_loop is not None and (loop_modes is None or mode in loop_modes):
            edits.append(("closed_loop", closed_loop_edit(rig, closed_loop, w, mode, p_v,
                                                          iterations=loop_iterations)))
        for name, w_hat in (*edits, ("naive", naive), ("no_edit", w)):
            p_hat = truth(w_hat)
            to_target = block_errors(layout, p_hat, p_v)
            from_source = block_errors(layout, p_hat, p_w)
            row: dict[str, Any] = {"control": {b: _summary(to_target[b]) for b in blocks},
                   "drift": {b: _summary(e) for b, e in from_source.items() if b not in blocks}}
            if observable is not None and mode in OBSERVABLE_OF:
                row["control_observable"] = {key: _summary(getattr(observable, key)(p_hat, p_v))
                                             for key in OBSERVABLE_OF[mode]}
            row["drift_mean"] = float(np.mean([row["drift"][b]["mean"] for b in row["drift"]
                                               if b != "rotation"]))
            if image_metrics:
                row["outside_face_change"] = _outside_change(generator, w, w_hat, batch)
            if reference is not None:
                embedded = reference if w_hat is w else _embed(identity_model, generator, w_hat, batch)
                row["identity_similarity"] = _summary(torch.nn.functional.cosine_similarity(embedded, reference))
            rows[name] = row
        rec = rig.edit(w, mode, fitted, corrections={}) - w
        rows["rignet"]["latent_reconstruction"] = float(
            rec.norm(dim=(1, 2)).mean() / (w - net.normaliser.w_avg).norm(dim=(1, 2)).mean())
        report["modes"][mode] = rows
    report["animator"] = animator_report(rig, generator, count=count, psi=psi, seed=seed)
    return report


def _read(fn, ws: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([fn(ws[i:i + batch]) for i in range(0, len(ws), batch)])


def expression_correlation(layout, estimate: torch.Tensor, truth: torch.Tensor, top: int = 20) -> dict[str, float]:
    """Pearson correlation of estimated and true weights of the `top` blendshapes that vary most in truth."""
    s = layout.slice("expression")
    names = [n.split("/")[-1] for n in layout.names[s]]
    e_true, e_est = truth[:, s].double(), estimate[:, s].double()
    order = torch.argsort(e_true.std(0), descending=True)[:top]
    correlation = {}
    for k in order.tolist():
        a, b = e_true[:, k] - e_true[:, k].mean(), e_est[:, k] - e_est[:, k].mean()
        correlation[names[k]] = float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))
    return correlation


@torch.no_grad()
def reader_report(read, generator, *, count: int = 1024, psi: float = 0.7, seed: int = HELD_OUT_SEED,
                  top: int = 20) -> dict:
    """How well a face reader (latents (B, num_ws, w_dim) -> parameters (B, D); DFR, or any other) reads the
    synthetic world's exact parameters, per blendshape and per block. Keyword args:
      count: held-out latents.
      psi: their truncation.
      top: the blendshapes that vary most in the world get a correlation each.
    """
    if not hasattr(generator, "true_params"):
        raise ValueError("a reader report needs a generator with exact parameters (the synthetic world)")
    layout = generator.layout
    w = sample_latents(generator, count, seed, psi)
    truth, est = _read(generator.true_params, w), _read(read, w)
    correlation = expression_correlation(layout, est, truth, top)
    errors = block_errors(layout, est, truth)
    report = {"count": count, "psi": psi, "seed": seed, "expression_correlation": correlation,
              "min_correlation": min(correlation.values()),
              "blocks": {b: _summary(e) for b, e in errors.items()}}
    if hasattr(generator, "model"):
        observable = ObservableErrors(generator.model, layout)(est, truth)
        report["observable"] = {k: _summary(e) for k, e in observable.items()}
    return report


def blendshape_index(layout) -> dict[str, int]:
    """Blendshape name ("jawOpen") -> its entry in the parameter vector."""
    s = layout.slice("expression")
    return {name.split("/")[-1]: s.start + i for i, name in enumerate(layout.names[s])}


def key_values(layout, truth: torch.Tensor, keys=ANIMATOR_KEYS, percentile: float = KEY_PERCENTILE) -> dict[str, float]:
    """The value each key is set to: the world's `percentile` of its blendshapes (truth: (N, D) parameters)."""
    index = blendshape_index(layout)
    return {key: float(np.percentile(truth[:, [index[n] for n in names]].cpu().numpy(), percentile))
            for key, names in keys.items() if all(n in index for n in names)}


@torch.no_grad()
def animator_report(rig: Rig, generator, *, count: int = 64, psi: float = 0.7, seed: int = HELD_OUT_SEED,
                    reference_count: int = 4096) -> dict:
    """What an animator sees: each key of ANIMATOR_KEYS set alone on every face's starting values (DFR's
    reading, as "Match rig to face" gives them), and the head turned through YAW_SWEEP_DEG, edited by the rig's
    live path (Rig.edit: RigNet and DFR's corrections).

    keys: per key, the fraction of the keyed change (target − the face's true value) that the edited face shows
    (median over faces; faces already within 0.1 of the key are left out), and dfr_read_median, the same share as
    DFR reads it (from its reading of the face to its reading of the edit), drift_median (the other blocks' change
    from the face, mean over blocks as in the modes' drift) and unkeyed_median (the RMS change of the other
    blendshapes), in prior standard deviations, and rignet_alone_median (the share without DFR's corrections).
    yaw_sweep: the angle between the edited face's rotation and the keyed one (rignet_alone_median: the same
    without DFR's corrections). On
    generators without exact parameters both are measured through DFR re-estimation (self-estimated).
    """
    exact = hasattr(generator, "true_params")
    truth = generator.true_params if exact else rig.fit
    layout = rig.layout
    device = next(rig.parameters()).device
    w = sample_latents(generator, count, seed, psi).to(device)
    start = rig.fit(w)
    p_w = truth(w)
    report: dict = {"count": count, "estimate": "exact" if exact else "self-estimated (DFR re-estimation)"}
    index = blendshape_index(layout)
    if "expression" in rig.rignets:
        reference = _read(truth, sample_latents(generator, reference_count, seed + 1, psi).to(device))
        keys = {}
        for key, value in key_values(layout, reference).items():
            idx = [index[n] for n in ANIMATOR_KEYS[key]]
            target = start.clone()
            target[:, idx] = value
            before = p_w[:, idx].mean(1)
            w_hat = rig.edit(w, "expression", target)
            p_hat = truth(w_hat)
            after = p_hat[:, idx].mean(1)
            # what else the key moved: the other blocks (drift, as in the modes' rows) and the unkeyed blendshapes
            moved = block_errors(layout, p_hat, p_w)
            drift = torch.stack([e for b, e in moved.items() if b not in ("expression", "rotation")]).mean(0)
            unkeyed = torch.ones(layout.dim, dtype=torch.bool)
            unkeyed[idx] = False
            unkeyed = unkeyed[layout.slice("expression")]
            z = (layout.normalise(p_hat) - layout.normalise(p_w))[:, layout.slice("expression")][:, unkeyed]
            unkeyed_rms = z.square().mean(1).sqrt()
            keyed = value - before
            valid = keyed.abs() > 0.1
            shown = (after - before)[valid] / keyed[valid]
            alone = (truth(rig.edit(w, "expression", target, corrections={}))[:, idx].mean(1) - before)[valid]
            alone = alone / keyed[valid]
            # the same share in DFR's own reading: low here means RigNet misses its own sensor's target, high
            # here but low above means RigNet found latents DFR misreads (docs/rig.md)
            read_keyed = value - start[:, idx].mean(1)
            read_valid = read_keyed.abs() > 0.1
            read = (rig.fit(w_hat)[:, idx].mean(1) - start[:, idx].mean(1))[read_valid] / read_keyed[read_valid]
            keys[key] = {"value": value, "faces": int(valid.sum()),
                         **(_summary(shown) if valid.any() else dict.fromkeys(("median", "mean", "p90"), math.nan)),
                         "dfr_read_median": float(read.median()) if read_valid.any() else math.nan,
                         "drift_median": float(drift.median()), "unkeyed_median": float(unkeyed_rms.median()),
                         "rignet_alone_median": float(alone.median()) if valid.any() else math.nan}
        report["keys"] = keys
    if "pose" in rig.rignets:
        rot = layout.slice("rotation")
        yaw = rot.start + 1  # rotation is (pitch, yaw, roll)
        per_yaw = {}
        errors, alone = [], []
        for deg in YAW_SWEEP_DEG:
            target = start.clone()
            target[:, yaw] = math.radians(deg)
            err = rotation_error_deg(truth(rig.edit(w, "pose", target))[:, rot], target[:, rot])
            per_yaw[f"{deg:+.0f}"] = float(err.median())
            errors.append(err)
            alone.append(rotation_error_deg(truth(rig.edit(w, "pose", target, corrections={}))[:, rot], target[:, rot]))
        report["yaw_sweep"] = {**_summary(torch.cat(errors)), "per_yaw_median": per_yaw,
                               "rignet_alone_median": float(torch.cat(alone).median())}
    return report


def _outside_change(generator, w: torch.Tensor, w_hat: torch.Tensor, batch: int) -> float:
    """Mean absolute change (0..1 scale) of the image outside the face (pixels the face covers in neither)."""
    if not hasattr(generator, "render"):  # generic generators: whole-image change
        diffs = [(generator.synthesis(w_hat[i:i + batch]) - generator.synthesis(w[i:i + batch])).abs().mean()
                 for i in range(0, len(w), batch)]
        return float(torch.stack(diffs).mean() / 2)
    total, pixels = 0.0, 0.0
    for i in range(0, len(w), batch):
        a, b = generator.render(w[i:i + batch]), generator.render(w_hat[i:i + batch])
        outside = ((a["mask"] == 0) & (b["mask"] == 0)).float()
        total += float(((a["image"] - b["image"]).abs().mean(1, keepdim=True) * outside).sum() / 2)
        pixels += float(outside.sum())
    return total / max(pixels, 1.0)


def format_table(report: dict) -> str:
    """A short human-readable table of a report."""
    lines = [f"evaluation on {report['count']} held-out latents (psi {report['psi']}), {report['estimate']}"]
    if "dfr" in report:
        lines.append("DFR error (median): " + ", ".join(
            f"{b} {v['median']:.2f}{'°' if b == 'rotation' else ''}" for b, v in report["dfr"].items()))
    if "reader" in report:
        corr = report["reader"]["expression_correlation"]
        lines.append(f"DFR reads the {len(corr)} most varying blendshapes with correlation "
                     f"{min(corr.values()):.2f}..{max(corr.values()):.2f}: " +
                     ", ".join(f"{n} {r:.2f}" for n, r in corr.items()))
    if "dfr_observable" in report:
        obs = report["dfr_observable"]
        lines.append(f"DFR observable error (median): expression geometry {obs['expression_mm']['median']:.2f} mm, "
                     f"shading {100 * obs['shading']['median']:.1f} %"
                     + (f", light direction {obs['light_direction_deg']['median']:.1f}°"
                        if "light_direction_deg" in obs else ""))
    identity = any("identity_similarity" in row for rows in report["modes"].values() for row in rows.values())
    header = f"{'mode':<13}{'method':<9}{'control (median)':>30}{'drift (mean, std)':>19}{'outside face':>14}"
    header += f"{'identity sim.':>15}" if identity else ""
    lines += ["", header, "-" * len(header)]
    for mode, rows in report["modes"].items():
        for name, row in rows.items():
            ctrl = "  ".join(
                f"{v['median']:.2f}{'°' if b == 'rotation' else ''}" for b, v in row["control"].items())
            for key, v in row.get("control_observable", {}).items():
                ctrl += {"expression_mm": f" ({v['median']:.2f} mm)", "shading": f" ({100 * v['median']:.1f} %)",
                         "light_direction_deg": f" ({v['median']:.1f}°)"}[key]
            out = row.get("outside_face_change", math.nan)
            line = f"{mode:<13}{name:<9}{ctrl:>30}{row['drift_mean']:>19.3f}{out:>14.4f}"
            if identity:
                line += f"{row.get('identity_similarity', {}).get('mean', math.nan):>15.3f}"
            lines.append(line)
    animator = report.get("animator")
    if animator:
        lines += ["", f"animator keys ({animator['count']} faces, {animator['estimate']}): "
                      "share of the keyed change shown"]
        for key, row in animator.get("keys", {}).items():
            lines.append(f"  {key:<13} to {row['value']:.2f}: median {100 * row['median']:6.1f} %  "
                         f"(mean {100 * row['mean']:6.1f} %, {row['faces']} faces; "
                         f"in DFR's reading {100 * row.get('dfr_read_median', math.nan):.0f} %, "
                         f"RigNet alone {100 * row.get('rignet_alone_median', math.nan):.0f} %; "
                         f"drift {row.get('drift_median', math.nan):.3f}, "
                         f"unkeyed {row.get('unkeyed_median', math.nan):.3f})")
        if "yaw_sweep" in animator:
            sweep = animator["yaw_sweep"]
            alone = sweep.get("rignet_alone_median")
            lines.append(f"  yaw sweep {YAW_SWEEP_DEG[0]:+.0f}..{YAW_SWEEP_DEG[-1]:+.0f}°: "
                         f"median {sweep['median']:.2f}°, p90 {sweep['p90']:.2f}°"
                         + (f" (RigNet alone {alone:.2f}°)" if alone is not None else ""))
    return "\n".join(lines)
