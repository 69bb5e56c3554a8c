"""StyleGAN2 generator speed: batch-1 latency and batch-16 throughput at 256 and 1024 pixels.

Networks are randomly initialised at NVIDIA's real sizes (`random:RES`, see networks.config_f); the timed call
is the synthesis network (W+ -> image, noise_mode='const'; the mapping network costs < 1 ms). Variants run
round-robin (one call of each per round) so that load from other processes hits all of them alike; the
median and the minimum over rounds are reported.

CPU variants: our plain float32 path, our step-by-step reference ops, both forms of the modulated conv,
channels-last, torch.compile (with --compile); with --nvidia-repo DIR also NVIDIA's own implementation
(a stylegan2-ada-pytorch or stylegan3 checkout, imported from DIR, outside this repository; its CUDA ops fall
back to their plain PyTorch reference on CPU) with the same weights, and the max abs difference of its images
from ours. CUDA variants (when CUDA is available): float32 with TF32 off, TF32, fp16, fp16 + channels-last,
torch.compile, CUDA graph (batch 1).

    .venv/bin/python benchmarks/generator.py [--res 256 1024] [--nvidia-repo /path/to/stylegan2-ada-pytorch]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylerig_engine.stylegan2.inference import FastGenerator, InferenceOptions, count_flops
from stylerig_engine.stylegan2.weights import random_generator


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def nvidia_generator(repo: str, G, device: torch.device):
    """NVIDIA's Generator with our weights, imported from their checkout (their modules stay out of ours)."""
    sys.path.insert(0, repo)
    try:
        import pkg_resources  # noqa: F401  (stylegan3's ops import parse_version from it)
    except ImportError:
        import re
        import types

        sys.modules["pkg_resources"] = types.SimpleNamespace(
            parse_version=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from training.networks_stylegan2 import Generator as NVGenerator  # stylegan3 checkout
        except ImportError:
            from training.networks import Generator as NVGenerator  # stylegan2-ada-pytorch checkout
    cfg = G.config
    try:
        nv = NVGenerator(**cfg)
    except TypeError:  # stylegan3 takes the synthesis arguments flat
        nv = NVGenerator(**{k: v for k, v in cfg.items() if k != "synthesis_kwargs"}, **cfg["synthesis_kwargs"])
    nv.load_state_dict(G.state_dict())
    return nv.eval().requires_grad_(False).to(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared machine the CPU time of a single-threaded
    run (--threads 1) hardly depends on other processes; wall time does."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def variants_for(device: torch.device, batch: int, args) -> dict[str, InferenceOptions]:
    if device.type == "cpu":
        v = {
            "ours fp32": InferenceOptions(),
            "ours fp32, reference ops": InferenceOptions(fast_ops=False, fused_modconv=True),
        }
        if batch > 1:
            v["ours fp32, scale-conv-scale everywhere"] = InferenceOptions(fused_modconv=False)
        else:
            v["ours fp32, channels-last"] = InferenceOptions(channels_last=True)
        if args.compile:
            v["ours fp32, torch.compile"] = InferenceOptions(compile=True)
        return v
    v = {
        "ours fp32 (TF32 off)": InferenceOptions(),
        "ours TF32": InferenceOptions(tf32=True),
        "ours fp16": InferenceOptions(fp16=True),
        "ours fp16 + channels-last": InferenceOptions(fp16=True, channels_last=True),
    }
    if args.compile:
        v["ours fp16 + torch.compile"] = InferenceOptions(fp16=True, compile=True)
    if batch == 1:
        v["ours fp16 + CUDA graph"] = InferenceOptions(fp16=True, cuda_graph=True)
    return v


def run(args) -> list[dict]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    results = []
    for res in args.res:
        base = random_generator(res)
        gflop = count_flops(base)
        for batch in args.batch:
            rounds = args.rounds_b1 if batch == 1 else args.rounds
            ws = base.mapping(torch.randn(batch, base.z_dim, generator=torch.Generator().manual_seed(0)))
            ws = ws.detach().to(device)
            calls = {}
            outputs = {}
            for name, opts in variants_for(device, batch, args).items():
                G = random_generator(res).to(device)
                runner = FastGenerator(G, opts)
                calls[name] = (lambda r=runner, ws=ws: r.synthesis(ws, "const"))
            if args.nvidia_repo:
                nv = nvidia_generator(args.nvidia_repo, base, device)
                label = "NVIDIA fp32" if device.type == "cpu" else "NVIDIA fp32 (TF32 as PyTorch default)"
                calls[label] = lambda nv=nv, ws=ws: nv.synthesis(ws, noise_mode="const", force_fp32=True)
                if device.type == "cuda":
                    calls["NVIDIA fp16"] = lambda nv=nv, ws=ws: nv.synthesis(ws, noise_mode="const")
            times: dict[str, list[float]] = {name: [] for name in calls}
            cpu_times: dict[str, list[float]] = {name: [] for name in calls}
            with torch.no_grad():
                for name, fn in calls.items():  # warm-up (compile, cuDNN autotune, CUDA graph capture)
                    if batch == 1 or device.type == "cuda" or "compile" in name:
                        outputs[name] = fn()
                for _ in range(rounds):
                    for name, fn in calls.items():
                        holder = {}
                        wall, cpu = timed(lambda fn=fn, holder=holder: holder.setdefault("y", fn()), device)
                        times[name].append(wall)
                        cpu_times[name].append(cpu)
                        outputs[name] = holder["y"]
            reference = outputs[next(iter(calls))].float()
            for name in calls:
                t = times[name]
                row = {"res": res, "batch": batch, "variant": name, "device": str(device), "rounds": len(t),
                       "median_s": statistics.median(t), "min_s": min(t),
                       "cpu_median_s": statistics.median(cpu_times[name]), "threads": torch.get_num_threads(),
                       "img_per_s": batch / statistics.median(t), "gflop_per_img": gflop,
                       "max_abs_diff_vs_first": float((outputs[name].float() - reference).abs().max()),
                       "load": load_average()}
                results.append(row)
                print(f"{res:5d} b{batch:<3d} {name:<44s} median {row['median_s'] * 1000:9.1f} ms "
                      f"min {row['min_s'] * 1000:9.1f} ms  cpu {row['cpu_median_s'] * 1000:9.1f} ms  "
                      f"{row['img_per_s']:7.2f} img/s  "
                      f"diff {row['max_abs_diff_vs_first']:.1e}  load {row['load']}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res", type=int, nargs="+", default=[256, 1024], help="resolutions")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes")
    parser.add_argument("--rounds-b1", type=int, default=5, help="timed rounds at batch 1")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds at larger batches")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--nvidia-repo", default=None, help="checkout of NVlabs/stylegan2-ada-pytorch or stylegan3")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(json.dumps(info), "load before:", load_average(), flush=True)
    results = run(args)
    print("load after:", load_average())
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
