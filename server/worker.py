"""The device worker: one thread owns the engine's torch work; requests from every client queue up here.

- Interactive renders are latest-wins per (client, slot): a new one replaces a queued, not-yet-started one,
  which is answered "superseded" at once. Each round takes every waiting interactive render (up to
  max_batch, from any client) and runs them as one generator call per set of edited modes.
- Other work (new_face, upload_latent, get_latent, fit, batch_render) waits in a bounded FIFO; each round also
  runs one step of it (a batch_render step is one generator call of up to max_batch frames, then the job goes to
  the back), so interactive renders are never stuck behind a long sequence and sequences are not starved either.
- Bounded: a full queue answers "busy". A request that waits longer than its timeout is answered "timeout"
  without being run. A client that disconnects has its queued work dropped and its running batch stopped.
- A batch_render only runs when its client's outbox is short (flow control), so a slow reader is not flooded.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from stylerig_addon import protocol as P

from stylerig_engine.engine import Engine, EngineError, encode_jpeg

from .requests import Request

log = logging.getLogger("stylerig.server")


@dataclass(eq=False)
class Job:
    conn: Any  # service.Connection: .id, .closed, .send(header, arrays, encoder), .outbox_len()
    req: Request
    received: float
    deadline: float | None
    state: str = "queued"  # queued | running | done
    cancelled: bool = False
    next_index: int = 0  # batch_render: frames already rendered
    started: float | None = None

    @property
    def key(self) -> Any:
        return self.req.id if self.req.id is not None else ("anonymous", id(self))


@dataclass
class WorkerConfig:
    max_batch: int = 8
    max_interactive: int = 256  # waiting interactive renders, all clients together
    max_jobs: int = 256  # waiting other jobs, all clients together
    max_jobs_per_client: int = 32
    stream_window: int = 16  # batch_render runs only while the client's outbox holds fewer frames
    render_timeout: float = 30.0
    job_timeout: float = 300.0


@dataclass
class Counters:
    generator_calls: int = 0
    frames_rendered: int = 0
    renders: int = 0
    batch_frames: int = 0
    superseded: int = 0
    busy: int = 0
    timeouts: int = 0
    cancelled: int = 0
    errors: int = 0
    batch_sizes: collections.deque = field(default_factory=lambda: collections.deque(maxlen=256))
    generator_seconds: float = 0.0


class Worker:
    def __init__(self, engine: Engine, config: WorkerConfig | None = None):
        self.engine = engine
        self.config = config or WorkerConfig()
        self.cond = threading.Condition()
        self._slots: collections.OrderedDict[tuple, Job] = collections.OrderedDict()
        self._jobs: collections.deque[Job] = collections.deque()
        self._by_conn: dict[int, dict[Any, Job]] = {}
        self._stopping = False
        self.counters = Counters()
        self.thread = threading.Thread(target=self._run, name="stylerig-device-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    # ---- called from connection threads ---------------------------------------------------------------
    def submit(self, conn, req: Request) -> None:
        """Queue a worker request; raises ProtocolError (busy, duplicate id, shutting down) to answer now."""
        now = time.monotonic()
        timeout = req.fields.get("timeout")
        if timeout is None:
            timeout = self.config.render_timeout if req.op == "render" else self.config.job_timeout
        if req.op == "batch_render" and req.fields.get("timeout") is None:
            deadline = None  # a sequence waits its turn however long the queue is; cancel it to stop
        else:
            deadline = now + timeout
        job = Job(conn, req, now, deadline)
        with self.cond:
            if self._stopping:
                raise P.ProtocolError(P.E_SHUTTING_DOWN, "the engine is shutting down", request_id=req.id)
            self._expire_locked(now)
            mine = self._by_conn.setdefault(conn.id, {})
            if job.key in mine:
                raise P.ProtocolError(
                    P.E_BAD_REQUEST,
                    f"request id {req.id!r} is already in use by an unanswered request of this connection",
                    request_id=req.id,
                )
            if req.op == "render":
                slot = (conn.id, req.fields["slot"])
                old = self._slots.pop(slot, None)
                if old is None and len(self._slots) >= self.config.max_interactive:
                    self.counters.busy += 1
                    raise P.ProtocolError(
                        P.E_BUSY,
                        f"engine busy: {len(self._slots)} interactive renders waiting",
                        request_id=req.id,
                    )
                if old is not None:
                    self.counters.superseded += 1
                    self._finish_locked(
                        old,
                        P.error_header(
                            P.E_SUPERSEDED,
                            "a newer render request from this client "
                            f"(slot {req.fields['slot']!r}) replaced this one",
                            old.req.id,
                        ),
                    )
                self._slots[slot] = job
            else:
                own = sum(1 for j in mine.values() if j.req.op != "render")
                if own >= self.config.max_jobs_per_client or len(self._jobs) >= self.config.max_jobs:
                    self.counters.busy += 1
                    raise P.ProtocolError(
                        P.E_BUSY,
                        f"engine busy: {len(self._jobs)} jobs waiting ({own} from this client)",
                        request_id=req.id,
                    )
                self._jobs.append(job)
            mine[job.key] = job
            self.cond.notify_all()

    def cancel(self, conn, request_id: Any) -> bool:
        """Cancel a queued request or a running batch_render of this connection. The cancelled request gets a
        final 'cancelled' error reply (a running batch after the frames of the step in progress)."""
        with self.cond:
            job = self._by_conn.get(conn.id, {}).get(request_id)
            if job is None or job.state == "done":
                return False
            if job.state == "queued":
                self._unqueue_locked(job)
                self._finish_cancelled_locked(job)
                return True
            if job.req.op == "batch_render":  # running: the worker stops it after the current step
                job.cancelled = True
                return True
            return False  # an interactive render or a task already in the generator

    def drop_connection(self, conn) -> None:
        """The client is gone: forget its queued work; its running batch stops after the current step."""
        with self.cond:
            for job in list(self._by_conn.pop(conn.id, {}).values()):
                job.cancelled = True
                if job.state == "queued":
                    self._unqueue_locked(job)
                    job.state = "done"
            self.cond.notify_all()

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            for job in list(self._slots.values()) + list(self._jobs):
                self._finish_locked(
                    job, P.error_header(P.E_SHUTTING_DOWN, "the engine is shutting down", job.req.id)
                )
            self._slots.clear()
            self._jobs.clear()
            self.cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    def stats(self) -> dict:
        c = self.counters
        with self.cond:
            return {
                "generator_calls": c.generator_calls,
                "frames_rendered": c.frames_rendered,
                "renders": c.renders,
                "batch_frames": c.batch_frames,
                "superseded": c.superseded,
                "busy": c.busy,
                "timeouts": c.timeouts,
                "cancelled": c.cancelled,
                "errors": c.errors,
                "batch_sizes": list(c.batch_sizes),
                "generator_seconds": round(c.generator_seconds, 6),
                "queued_renders": len(self._slots),
                "queued_jobs": len(self._jobs),
                "handles": self.engine.num_handles,
            }

    # ---- bookkeeping (under self.cond) ---------------------------------------------------------------
    def _unqueue_locked(self, job: Job) -> None:
        if job.req.op == "render":
            slot = (job.conn.id, job.req.fields["slot"])
            if self._slots.get(slot) is job:
                del self._slots[slot]
        else:
            try:
                self._jobs.remove(job)
            except ValueError:
                pass

    def _finish_locked(self, job: Job, header: dict, arrays=None, encoder=None) -> None:
        if job.state == "done":
            return
        job.state = "done"
        mine = self._by_conn.get(job.conn.id)
        if mine is not None and mine.get(job.key) is job:
            del mine[job.key]
        if not job.conn.closed:
            job.conn.send(header, arrays, encoder)

    def _finish_cancelled_locked(self, job: Job) -> None:
        self.counters.cancelled += 1
        extra = {"done": job.next_index, "total": job.req.frames} if job.req.op == "batch_render" else {}
        self._finish_locked(
            job, P.error_header(P.E_CANCELLED, "cancelled by the client", job.req.id, **extra)
        )

    def _expire_locked(self, now: float) -> None:
        for job in [
            j
            for j in list(self._slots.values()) + list(self._jobs)
            if j.deadline is not None and now > j.deadline and j.next_index == 0
        ]:
            self._unqueue_locked(job)
            self.counters.timeouts += 1
            waited = now - job.received
            self._finish_locked(
                job,
                P.error_header(
                    P.E_TIMEOUT, f"not started within its timeout ({waited:.2f} s in the queue)", job.req.id
                ),
            )

    def _finish(self, job: Job, header: dict, arrays=None, encoder=None) -> None:
        with self.cond:
            self._finish_locked(job, header, arrays, encoder)

    def _fail(self, job: Job, code: str, message: str, **extra) -> None:
        with self.cond:
            self.counters.errors += 1
            self._finish_locked(job, P.error_header(code, message, job.req.id, **extra))

    def _runnable_batch(self, job: Job) -> bool:
        return job.req.op != "batch_render" or job.conn.outbox_len() < self.config.stream_window

    # ---- the worker thread ---------------------------------------------------------------------------
    def _take_locked(self) -> tuple[list[Job], Job | None]:
        renders: list[Job] = []
        while self._slots and len(renders) < self.config.max_batch:
            _, job = self._slots.popitem(last=False)
            job.state = "running"
            renders.append(job)
        task = None
        for _ in range(len(self._jobs)):
            job = self._jobs.popleft()
            if self._runnable_batch(job):
                task = job
                job.state = "running"
                break
            self._jobs.append(job)
        return renders, task

    def _run(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self._stopping:
                        return
                    self._expire_locked(time.monotonic())
                    renders, task = self._take_locked()
                    if renders or task:
                        break
                    self.cond.wait(0.25)
            now = time.monotonic()
            for job in renders + ([task] if task else []):
                job.started = job.started or now
            try:
                if renders:
                    self._run_renders(renders)
                if task is not None:
                    self._run_task(task)
            except Exception as e:  # noqa: BLE001 - never let the worker die
                log.error("worker error: %s\n%s", e, traceback.format_exc())
                for job in renders + ([task] if task else []):
                    if job.state != "done":
                        self._fail(job, P.E_INTERNAL, f"internal error: {type(e).__name__}: {e}")

    def _generate(self, ws: torch.Tensor, targets: dict, rest: torch.Tensor | None = None) -> torch.Tensor:
        t = time.perf_counter()
        x = self.engine.synthesize(ws, targets, rest)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        dt = time.perf_counter() - t
        with self.cond:
            c = self.counters
            c.generator_calls += 1
            c.frames_rendered += len(ws)
            c.batch_sizes.append(len(ws))
            c.generator_seconds += dt
        return x

    def _face(self, job: Job) -> torch.Tensor:
        if job.req.fields.get("handle") is not None:
            return self.engine.latent(job.req.fields["handle"])
        return torch.from_numpy(job.req.arrays["ws"]).to(self.engine.device)

    @staticmethod
    def _modes(job: Job) -> tuple[str, ...]:
        return tuple(sorted(n[len("target/") :] for n in job.req.arrays if n.startswith("target/")))

    def _image_reply(self, job: Job, header: dict, image: np.ndarray) -> tuple[dict, Any, Any]:
        f = job.req.fields
        header.update(format=f["format"], size=int(image.shape[0]))
        if f["format"] == "jpeg":
            quality = f["quality"]
            return header, None, lambda: {"jpeg": np.frombuffer(encode_jpeg(image, quality), np.uint8)}
        return header, {"image": image}, None

    def _run_renders(self, jobs: list[Job]) -> None:
        groups: dict[tuple, list[tuple[Job, torch.Tensor]]] = {}
        for job in jobs:
            if job.conn.closed:
                self._finish(job, {})
                continue
            try:
                face = self._face(job)
            except EngineError as e:
                self._fail(job, e.code, str(e))
                continue
            groups.setdefault((self._modes(job), "rest" in job.req.arrays), []).append((job, face))
        for (modes, has_rest), items in groups.items():
            group = [j for j, _ in items]
            try:
                ws = torch.stack([w for _, w in items])
                targets = self.engine.check_targets(
                    {m: np.stack([j.req.arrays[f"target/{m}"] for j in group]) for m in modes}, len(group)
                )
                rest = np.stack([j.req.arrays["rest"] for j in group]) if has_rest else None
                t0 = time.perf_counter()
                x = self._generate(ws, targets, self.engine.check_rest(rest, len(group)))
                t_gen = time.perf_counter() - t0
                by_format: dict[tuple, list[int]] = {}
                for i, j in enumerate(group):
                    f = j.req.fields
                    by_format.setdefault((f["size"], f["format"], f["origin"], f["colorspace"]), []).append(i)
                for (size, fmt, origin, colorspace), idx in by_format.items():
                    images = self.engine.to_images(
                        x[idx] if len(idx) < len(group) else x,
                        size,
                        fmt,
                        origin=origin,
                        colorspace=colorspace,
                    )
                    for i, image in zip(idx, images):
                        j = group[i]
                        header = {
                            "id": j.req.id,
                            "ok": True,
                            "final": True,
                            "op": "render",
                            "batch": len(group),
                            "timing": {
                                "queued": round((j.started or j.received) - j.received, 6),
                                "generator": round(t_gen, 6),
                            },
                        }
                        with self.cond:
                            self.counters.renders += 1
                        self._finish(j, *self._image_reply(j, header, image))
            except EngineError as e:
                for j in group:
                    self._fail(j, e.code, str(e))
            except Exception as e:  # noqa: BLE001 - answered as 'internal', the worker goes on
                log.error("render failed: %s\n%s", e, traceback.format_exc())
                for j in group:
                    self._fail(j, P.E_INTERNAL, f"render failed: {type(e).__name__}: {e}")

    def _run_task(self, job: Job) -> None:
        if job.conn.closed or job.cancelled:
            with self.cond:
                if not job.conn.closed:
                    self._finish_cancelled_locked(job)
                job.state = "done"
            return
        op, f = job.req.op, job.req.fields
        try:
            if op == "upload_latent":
                self._finish(job, {"id": job.req.id, "ok": True, "final": True, "op": op,
                                   "handle": self.engine.upload(job.req.arrays["ws"])})
            elif op == "get_latent":
                ws = self.engine.latent(f["handle"]).detach().float().cpu().numpy()
                self._finish(job, {"id": job.req.id, "ok": True, "final": True, "op": op}, {"ws": ws})
            elif op == "new_face":
                handles = self.engine.new_faces(f["seeds"], f["psi"])
                header = {"id": job.req.id, "ok": True, "final": True, "op": op}
                header.update({"handles": handles} if f["many"] else {"handle": handles[0]})
                self._finish(job, header)
            elif op == "fit":
                if f.get("final_quality"):
                    from stylerig_engine.rig.final_quality import fit_final  # loaded only when asked for

                    p = fit_final(self.engine, f["handles"])
                else:
                    p = self.engine.fit(f["handles"])
                header = {"id": job.req.id, "ok": True, "final": True, "op": op}
                if f["named"]:
                    header["params"] = (
                        [self.engine.layout.to_dict(v) for v in p]
                        if f["many"]
                        else self.engine.layout.to_dict(p[0])
                    )
                self._finish(job, header, {"p": p if f["many"] else p[0]})
            elif op == "batch_render":
                self._step_batch(job)
            else:
                self._fail(job, P.E_UNKNOWN_OP, f"operation {op!r} does not run on the worker")
        except EngineError as e:
            extra = {"done": job.next_index, "total": job.req.frames} if op == "batch_render" else {}
            self._fail(job, e.code, str(e), **extra)

    def _render_final(self, job: Job, ws: torch.Tensor, targets: dict,
                      rest: torch.Tensor | None) -> torch.Tensor | None:
        """Final-quality frames (closed-loop editing, rig/final_quality.py); None when the job is cancelled, its
        client gone or the engine stopping between two of the loop's readings (each is seconds on a CPU)."""
        from stylerig_engine.rig.final_quality import FinalQualityCancelled, render_final  # loaded only when asked for

        try:
            x = render_final(
                self.engine, ws, targets, rest=rest,
                should_stop=lambda: job.cancelled or job.conn.closed or self._stopping,
            )
        except FinalQualityCancelled:
            return None
        with self.cond:
            self.counters.frames_rendered += len(ws)
        return x

    def _step_batch(self, job: Job) -> None:
        f, a = job.req.fields, job.req.arrays
        total = job.req.frames
        i = job.next_index
        final = bool(f.get("final_quality"))
        n = min(1 if final else self.config.max_batch, total - i)  # a final frame takes seconds: one per step
        if f.get("handle") is not None:
            ws = self.engine.latent(f["handle"])[None].expand(n, -1, -1)
        elif f.get("handles") is not None:
            ws = self.engine.latents(f["handles"][i : i + n])
        else:
            ws = torch.from_numpy(a["ws"][i : i + n]).to(self.engine.device)
        modes = self._modes(job)
        targets = self.engine.check_targets({m: a[f"target/{m}"][i : i + n] for m in modes}, n)
        rest_given = a.get("rest")  # (D,) for every frame or (N, D)
        rest = self.engine.check_rest(
            rest_given if rest_given is None or rest_given.ndim == 1 else rest_given[i : i + n], n
        )
        x = self._render_final(job, ws, targets, rest) if final else self._generate(ws, targets, rest)
        if x is None:  # a final frame stopped between two readings: this step renders nothing
            n = 0
        images: Any = (
            self.engine.to_images(x, f["size"], f["format"], origin=f["origin"], colorspace=f["colorspace"])
            if n and x is not None
            else []
        )
        for k, image in enumerate(images):
            header = {
                "id": job.req.id,
                "ok": True,
                "final": False,
                "op": "batch_render",
                "event": "frame",
                "frame": f["frame_ids"][i + k],
                "index": i + k,
                "done": i + k + 1,
                "total": total,
            }
            header, arrays, encoder = self._image_reply(job, header, image)
            job.conn.send(header, arrays, encoder)
        with self.cond:
            self.counters.batch_frames += n
            job.next_index = i + n
            if job.conn.closed:
                job.state = "done"
            elif job.cancelled:
                self._finish_cancelled_locked(job)
            elif self._stopping:
                self._finish_locked(
                    job,
                    P.error_header(
                        P.E_SHUTTING_DOWN,
                        "the engine is shutting down",
                        job.req.id,
                        done=job.next_index,
                        total=total,
                    ),
                )
            elif job.next_index >= total:
                self._finish_locked(
                    job,
                    {
                        "id": job.req.id,
                        "ok": True,
                        "final": True,
                        "op": "batch_render",
                        "event": "end",
                        "frames": total,
                        "done": total,
                        "total": total,
                    },
                )
            else:
                job.state = "queued"
                self._jobs.append(job)
                self.cond.notify_all()
