"""Engine server benchmark: round-trip latency and frames/s against the generator-only time, same run.

    .venv/bin/python benchmarks/server.py                          # synthetic if present, else the stand-in
    .venv/bin/python benchmarks/server.py --generator random:256 --sizes 256
    .venv/bin/python benchmarks/server.py --generator standin --sizes 256 512 1024 --json out.json

The server runs in a child process (`benchmarks/server.py child ...`, like the Blender add-on talks to a
separate engine process); this process is the client. For each size S the generator is built at resolution S
where the spec allows it (standin:S, random:S), so no resize is involved; otherwise the engine resizes.

Measured, per size:
  generator   median synthesis time of one image in the server process (engine.synthesize, before serving)
  round trip  median latency of one blocking render request (RGBA8), one in flight
  overhead    round trip - the generator time the server measured for that same request (reply header
              timing.generator): protocol, validation, queueing, torch->numpy conversion, socket, decode;
              overhead % is relative to that in-request generator time (robust on a shared machine)
  interactive frames/s with two requests in flight (what StreamingRenderer does)
  batch       frames/s of one batch_render of N frames (the generator batches max_batch frames per call)

Stand-in generator ("standin:R"): a fixed random conv net (const 4x4 -> conv/upsample blocks -> RGB at R),
used when the real generators are not available; its cost grows with R^2 like StyleGAN2's.
Null generator ("null:R"): returns a fixed image at no cost, so the round trip *is* the server's overhead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ---- the stand-in generator (also used by load_test.py through the child process) --------------------
def standin_generator(resolution: int, seed: int = 0):
    import torch
    from torch import nn

    class ConvStandIn(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.z_dim = self.w_dim = 512
            self.img_resolution = resolution
            levels = int(math.log2(resolution)) - 1  # 4 -> R
            self.num_ws = 2 * levels
            self.register_buffer("w_avg", torch.zeros(512))
            self.register_buffer("map", torch.randn(512, 512, generator=g) / 512**0.5)
            self.const = nn.Parameter(torch.randn(1, 64, 4, 4, generator=g))
            chans = [max(8, 64 >> max(0, i - 3)) for i in range(levels)]  # fewer channels at high resolution
            self.style = nn.ModuleList(nn.Linear(512, c) for c in chans)
            self.convs = nn.ModuleList(
                nn.Conv2d(chans[max(i - 1, 0)] if i else 64, c, 3, padding=1) for i, c in enumerate(chans)
            )
            self.rgb = nn.Conv2d(chans[-1], 3, 1)
            for p in self.parameters():
                p.requires_grad_(False)

        def mapping(self, z, psi=1.0):
            w = torch.tanh(z @ self.map)
            w = self.w_avg + psi * (w - self.w_avg)
            return w[:, None].repeat(1, self.num_ws, 1)

        def synthesis(self, ws, noise_mode="const"):
            x = self.const.expand(len(ws), -1, -1, -1)
            for i, (style, conv) in enumerate(zip(self.style, self.convs)):
                if i:
                    x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
                x = nn.functional.leaky_relu(conv(x) * (1 + style(ws[:, 2 * i]))[:, :, None, None], 0.2)
            return torch.tanh(self.rgb(x))

    return ConvStandIn().eval()


def null_generator(resolution: int):
    """A generator that costs nothing: synthesis returns a fixed image. Round trips then measure the server's
    own overhead (protocol, queueing, conversion, sockets) free of the generator's timing noise."""
    import torch

    class Null:
        z_dim = w_dim = 512
        num_ws = 8
        img_resolution = resolution
        w_avg = torch.zeros(512)

        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.image = torch.rand(1, 3, resolution, resolution, generator=g) * 2 - 1

        def mapping(self, z, psi=1.0):
            return z[:, None].repeat(1, self.num_ws, 1)

        def synthesis(self, ws, noise_mode="const"):
            return self.image.expand(len(ws), -1, -1, -1)

    return Null()


def tiny_face_model():
    from stylerig_engine.facemodel.model import MorphableModel

    v = 4
    pv = np.array([0, 1, 2, 3], np.int32)
    return MorphableModel(
        name="bench",
        neutral=np.zeros((v, 3), np.float32),
        identity_basis=np.zeros((2, v, 3), np.float32),
        expression_basis=np.zeros((1, v, 3), np.float32),
        expression_names=["jawOpen"],
        expression_prior="blendshape",
        albedo_mean=np.full((v, 3), 0.5, np.float32),
        albedo_basis=np.zeros((1, v, 3), np.float32),
        albedo_names=["tone"],
        triangles=np.array([[0, 1, 2], [0, 2, 3]], np.int32),
        polygon_start=np.array([0, 4], np.int32),
        polygon_vertices=pv,
        uvs=np.zeros((v, 2), np.float32),
        polygon_uvs=pv.copy(),
        landmarks=np.zeros(68, np.int32),
        regions={},
    )


def build(spec: str, size: int, max_batch: int, device: str):
    """An Engine for `spec` at `size` where the spec has a resolution: standin[:R], random[:R], or any
    build_engine spec (synthetic, a path...)."""
    from stylerig_engine.engine import Engine, build_engine
    from stylerig_engine.params import layout_for_model

    name, _, res = spec.partition(":")
    if name in ("standin", "null"):
        model = tiny_face_model()
        make = standin_generator if name == "standin" else null_generator
        return Engine(
            make(int(res or size)),
            model,
            layout_for_model(model),
            device=device,
            max_batch=max_batch,
            name=f"{name}:{res or size}",
        )
    if name == "random":
        spec = f"random:{res or size}"
        try:
            return build_engine(spec, device=device, max_batch=max_batch, model=None)
        except Exception:  # noqa: BLE001 - fall back to building a random StyleGAN2 here
            import torch

            from stylerig_engine.stylegan2.inference import FastGenerator
            from stylerig_engine.stylegan2.networks import Generator

            torch.manual_seed(0)
            gen = FastGenerator(Generator(img_resolution=int(res or size)).eval().requires_grad_(False))
            model = tiny_face_model()
            return Engine(
                gen,
                model,
                layout_for_model(model),
                device=device,
                max_batch=max_batch,
                name=f"random:{res or size} (networks.Generator defaults)",
            )
    return build_engine(spec, device=device, max_batch=max_batch)


def default_spec() -> str:
    try:
        from stylerig_engine.synthetic import SyntheticGenerator  # noqa: F401
    except ImportError:
        return "standin"
    return "synthetic"


# ---- child: the server process ------------------------------------------------------------------------
def child(args) -> int:
    import signal

    import torch
    from stylerig_server.service import EngineServer
    from stylerig_server.worker import WorkerConfig

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build(args.generator, args.size, args.max_batch, args.device)
    ws = engine.map_seeds([1], 0.7)  # the face the client renders
    times: list[float] = []
    out: dict = {}

    def measure_generator() -> None:  # on its own thread, like the server's device worker
        for _ in range(5):  # warm-up
            engine.synthesize(ws)
        deadline = time.perf_counter() + args.gen_seconds
        while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 50):
            t = time.perf_counter()
            x = engine.synthesize(ws)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.to_images(x, args.size, "rgba8")
        out["convert"] = time.perf_counter() - t

    th = threading.Thread(target=measure_generator)
    th.start()
    th.join()
    convert = out["convert"]
    server = EngineServer(
        engine, port=0, token=args.token, worker_config=WorkerConfig(max_batch=args.max_batch)
    )
    info = server.start()
    info.update(
        generator=engine.name,
        resolution=engine.resolution,
        generator_s=statistics.median(times),
        generator_samples=len(times),
        convert_s=convert,
        device=str(engine.device),
        torch_threads=torch.get_num_threads(),
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(json.dumps(info), flush=True)
    while not server.wait(0.5):
        pass
    return 0


def spawn(
    generator: str,
    size: int,
    max_batch: int = 8,
    device: str = "cpu",
    gen_seconds: float = 3.0,
    threads: int = 0,
):
    """Start a child server; returns (process, listen info incl. generator timing, token)."""
    import secrets

    token = secrets.token_hex(32)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "child",
            "--generator",
            generator,
            "--size",
            str(size),
            "--max-batch",
            str(max_batch),
            "--device",
            device,
            "--gen-seconds",
            str(gen_seconds),
            "--token",
            token,
            "--threads",
            str(threads),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise RuntimeError(f"benchmark server failed to start (exit {proc.returncode})")
    return proc, json.loads(line), token


def stop(proc, client=None) -> None:
    try:
        if client is not None:
            client.shutdown()
        proc.wait(timeout=30)
    except Exception:  # noqa: BLE001 - make sure the child goes away
        proc.kill()
        proc.wait()


# ---- client side ---------------------------------------------------------------------------------------
def measure(client, size: int, seconds: float, batch_frames: int, fmt: str = "rgba8") -> dict:
    from stylerig_addon import protocol as P
    from stylerig_addon.client import EngineError

    h = client.new_face(1, 0.7)
    for _ in range(2):
        client.render(h, size=size, format=fmt)
    rts, overheads, gens = [], [], []
    deadline = time.perf_counter() + seconds
    while len(rts) < 5 or (time.perf_counter() < deadline and len(rts) < 200):
        t = time.perf_counter()
        frame = client.render_async(h, size=size, format=fmt).result(120)
        rt = time.perf_counter() - t
        rts.append(rt)
        gens.append(frame.header["timing"]["generator"])
        overheads.append(rt - frame.header["timing"]["generator"])
    # interactive: two in flight, like StreamingRenderer
    done = superseded = 0
    inflight = []
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline or inflight:
        while len(inflight) < 2 and time.perf_counter() < deadline:
            inflight.append(client.render_async(h, size=size, format=fmt))
        try:
            inflight.pop(0).result(120)
            done += 1
        except EngineError as e:  # the queued one was replaced by the next: latest-wins, not a frame
            if e.code != "superseded":
                raise
            superseded += 1
    fps = done / (time.perf_counter() - t0)
    # batch_render throughput
    t0 = time.perf_counter()
    n = sum(1 for _ in client.batch_render(h, count=batch_frames, size=size, format=fmt))
    batch_fps = n / (time.perf_counter() - t0)
    payload = size * size * 4 if fmt == "rgba8" else None
    return {
        "size": size,
        "format": fmt,
        "samples": len(rts),
        "round_trip_ms": 1e3 * statistics.median(rts),
        "generator_in_request_ms": 1e3 * statistics.median(gens),
        "overhead_ms": 1e3 * statistics.median(overheads),
        "interactive_fps": fps,
        "superseded": superseded,
        "batch_fps": batch_fps,
        "batch_frames": batch_frames,
        "payload_bytes": payload,
        "protocol": P.VERSION,
    }


def run(args) -> list[dict]:
    from stylerig_addon.client import Client

    results = []
    for size in args.sizes:
        proc, info, token = spawn(
            args.generator, size, args.max_batch, args.device, args.gen_seconds, args.threads
        )
        client = None
        try:
            client = Client.connect(("127.0.0.1", info["port"]), token=token, timeout=300)
            r = measure(client, size, args.seconds, args.batch_frames, args.format)
            r.update(
                generator=info["generator"],
                resolution=info["resolution"],
                device=info["device"],
                generator_only_ms=1e3 * info["generator_s"],
                convert_ms=1e3 * info["convert_s"],
                torch_threads=info["torch_threads"],
            )
            r["overhead_pct"] = 100 * r["overhead_ms"] / r["generator_in_request_ms"]
            results.append(r)
            print(
                f"{r['generator']:>14} {size:>5}² {args.format:>7}  "
                f"generator {r['generator_only_ms']:8.2f} ms "
                f"(in requests {r['generator_in_request_ms']:8.2f} ms)  "
                f"round trip {r['round_trip_ms']:8.2f} ms  "
                f"overhead {r['overhead_ms']:6.2f} ms "
                f"({r['overhead_pct']:5.1f} %)  interactive {r['interactive_fps']:6.1f} fps  "
                f"batch {r['batch_fps']:6.1f} fps",
                flush=True,
            )
        finally:
            stop(proc, client)
    return results


def machine() -> dict:
    try:
        load = subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    except OSError:
        load = "n/a"
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "uptime": load,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode")
    c = sub.add_parser("child")
    c.add_argument("--generator", required=True)
    c.add_argument("--size", type=int, required=True)
    c.add_argument("--max-batch", type=int, default=8)
    c.add_argument("--device", default="cpu")
    c.add_argument("--gen-seconds", type=float, default=3.0)
    c.add_argument("--token", required=True)
    c.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--generator",
        default=None,
        help="standin[:R] | random[:R] | synthetic | PATH (default: synthetic when present, else standin)",
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0, help="time per measurement (bounded)")
    p.add_argument("--gen-seconds", type=float, default=3.0)
    p.add_argument("--batch-frames", type=int, default=16)
    p.add_argument("--format", default="rgba8", choices=["rgba8", "float16", "jpeg"])
    p.add_argument("--threads", type=int, default=0, help="torch threads in the server (default: torch's)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.mode == "child":
        return child(args)
    args.generator = args.generator or default_spec()
    m = machine()
    print(f"# {m['uptime']}\n# python {m['python']}, torch {m['torch']}, {m['cores']} cores", flush=True)
    results = run(args)
    m["uptime_after"] = machine()["uptime"]
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
