"""Bounded load test of the engine server on loopback.

    .venv/bin/python benchmarks/load_test.py                       # 8 clients x 50 requests, stand-in at 64²
    .venv/bin/python benchmarks/load_test.py --clients 16 --requests 100 --generator synthetic --size 256

N concurrent clients (one connection each, raw protocol so every reply is counted) send M requests each with
up to --inflight outstanding: mostly renders (interactive, latest-wins slot per client), plus new_face and
ping. Checks: every request gets exactly one final reply (ok, or an error such as superseded/busy), no reply
for an unknown id, no connection dropped. Reports p50/p99 latency. Then a client starts a long batch_render,
reads a few frames and disconnects: the worker must stop rendering its frames.

Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import random
import socket
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _bench_server():
    spec = importlib.util.spec_from_file_location("stylerig_bench_server", HERE / "server.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class RawClient:
    """One connection; counts every reply per request id."""

    def __init__(self, port: int, token: str, P):
        self.P = P
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stream = self.sock.makefile("rb")
        P.send_frame(self.sock, {"op": "hello", "id": 0, "token": token, "protocol": P.VERSION})
        assert P.read_frame(self.stream).header["ok"]
        self.sent: dict[int, float] = {}
        self.ops: dict[int, str] = {}
        self.finals: collections.Counter = collections.Counter()
        self.latency: dict[int, float] = {}
        self.outcome: dict[int, str] = {}
        self.unknown = 0
        self.partial = 0
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        P = self.P
        try:
            while True:
                h = P.read_frame(self.stream).header
                with self.cond:
                    rid = h.get("id")
                    if rid not in self.sent:
                        self.unknown += 1
                    elif not P.is_final(h):
                        self.partial += 1
                    else:
                        self.finals[rid] += 1
                        self.latency.setdefault(rid, time.perf_counter() - self.sent[rid])
                        self.outcome[rid] = "ok" if h.get("ok") else h["error"]["code"]
                    self.cond.notify_all()
        except (P.ConnectionLost, OSError) as e:
            self.error = e
            with self.cond:
                self.cond.notify_all()

    def send(self, rid: int, header: dict, arrays=None) -> None:
        with self.cond:
            self.sent[rid] = time.perf_counter()
            self.ops[rid] = header["op"]
        self.P.send_frame(self.sock, {**header, "id": rid}, arrays)

    def outstanding(self) -> int:
        with self.cond:
            return len(self.sent) - len(self.finals)

    def wait_below(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.sent) - len(self.finals) >= n:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return False
                self.cond.wait(left)
        return True

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.stream.close()
        self.sock.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def load(args, port: int, token: str, P, handle: str) -> dict:
    clients = [RawClient(port, token, P) for _ in range(args.clients)]
    failures: list[str] = []

    def drive(i: int, c: RawClient) -> None:
        rng = random.Random(i)
        for k in range(1, args.requests + 1):
            if not c.wait_below(args.inflight, args.max_seconds):
                failures.append(f"client {i}: stalled with {c.outstanding()} outstanding ({c.error})")
                return
            r = rng.random()
            if r < 0.8:
                c.send(k, {"op": "render", "handle": handle, "size": args.size, "slot": f"s{k % 2}"})
            elif r < 0.9:
                c.send(k, {"op": "new_face", "seed": rng.randrange(1000)})
            else:
                c.send(k, {"op": "ping"})
        if not c.wait_below(1, args.max_seconds):
            failures.append(f"client {i}: {c.outstanding()} requests never answered ({c.error})")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=drive, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    time.sleep(0.3)  # anything answered twice would arrive now
    outcomes: collections.Counter = collections.Counter()
    render_lat, all_lat = [], []
    for i, c in enumerate(clients):
        with c.cond:
            twice = [rid for rid, n in c.finals.items() if n != 1]
            lost = [rid for rid in c.sent if rid not in c.finals]
            if twice:
                failures.append(f"client {i}: requests answered more than once: {twice[:5]}")
            if lost:
                failures.append(f"client {i}: requests never answered: {lost[:5]}")
            if c.unknown:
                failures.append(f"client {i}: {c.unknown} replies to unknown ids")
            if c.error is not None:
                failures.append(f"client {i}: connection lost: {c.error}")
            outcomes.update(c.outcome.values())
            all_lat += list(c.latency.values())
            render_lat += [t for r, t in c.latency.items() if c.ops[r] == "render" and c.outcome[r] == "ok"]
        c.close()
    total = args.clients * args.requests
    return {
        "clients": args.clients,
        "requests": total,
        "seconds": elapsed,
        "throughput": total / elapsed,
        "outcomes": dict(outcomes),
        "p50_ms": 1e3 * percentile(all_lat, 50),
        "p99_ms": 1e3 * percentile(all_lat, 99),
        "render_p50_ms": 1e3 * percentile(render_lat, 50),
        "render_p99_ms": 1e3 * percentile(render_lat, 99),
        "max_ms": 1e3 * max(all_lat, default=float("nan")),
        "failures": failures,
    }


def disconnect_check(port: int, token: str, P, handle: str, size: int) -> dict:
    """A client starts a long batch_render, reads 3 frames and disconnects: rendering must stop."""
    from stylerig_addon.client import Client

    watcher = Client.connect(("127.0.0.1", port), token=token)
    before = watcher.stats()["frames_rendered"]
    c = RawClient(port, token, P)
    frames = 10_000
    c.send(1, {"op": "batch_render", "handle": handle, "count": frames, "size": size})
    deadline = time.monotonic() + 60
    while c.partial < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    c.close()
    time.sleep(0.5)
    a = watcher.stats()["frames_rendered"]
    time.sleep(1.0)
    b = watcher.stats()["frames_rendered"]
    watcher.close()
    rendered = b - before
    ok = a == b and rendered < frames
    return {
        "frames_requested": frames,
        "frames_read": c.partial,
        "frames_rendered": rendered,
        "stopped": ok,
        "failures": []
        if ok
        else [f"worker kept rendering after the disconnect ({a - before} -> {rendered})"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="per client")
    p.add_argument("--inflight", type=int, default=2, help="outstanding requests per client")
    p.add_argument("--generator", default="standin:64")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-seconds", type=float, default=120.0, help="give up on a stalled client after this")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from stylerig_addon import protocol as P
    from stylerig_addon.client import Client

    bench = _bench_server()
    proc, info, token = bench.spawn(args.generator, args.size, args.max_batch, args.device, gen_seconds=0.5)
    client = None
    try:
        client = Client.connect(("127.0.0.1", info["port"]), token=token)
        handle = client.new_face(0)
        result = load(args, info["port"], token, P, handle)
        result["disconnect"] = disconnect_check(info["port"], token, P, handle, args.size)
        result["stats"] = client.stats()
        result["generator"] = info["generator"]
        result["machine"] = bench.machine()
    finally:
        bench.stop(proc, client)
    failures = result["failures"] + result["disconnect"]["failures"]
    print(
        f"{result['clients']} clients x {args.requests} requests ({result['generator']}, {args.size}²): "
        f"{result['throughput']:.1f} req/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms (renders: p50 {result['render_p50_ms']:.1f} ms, p99 "
        f"{result['render_p99_ms']:.1f} ms); outcomes {result['outcomes']}"
    )
    d = result["disconnect"]
    print(
        f"disconnect mid-stream: read {d['frames_read']} of {d['frames_requested']} frames, worker rendered "
        f"{d['frames_rendered']} then stopped: {d['stopped']}"
    )
    print(
        f"generator calls {result['stats']['generator_calls']}, mean batch "
        f"{result['stats']['frames_rendered'] / max(1, result['stats']['generator_calls']):.2f}"
    )
    print("PASS" if not failures else "FAIL:\n  " + "\n  ".join(failures))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
