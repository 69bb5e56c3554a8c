"""Batch rendering: the rig's parameters at every frame of a range, rendered by the engine (batch_render) into a
PNG sequence, then an MP4.

    job = BatchJob.from_scene(scene, rig, out_dir, frames=range(1, 121), size=512)   # main thread (frame_set)
    job.run(client)                    # any thread: frames stream in, each written as it arrives
    encode_mp4(job.frame_paths(), out_dir / "stylerig.mp4", fps=24)   # Blender's FFmpeg (main thread)

Resumable: every PNG carries a tEXt chunk "stylerig" with a digest of what it shows (face, parameters, size,
the engine's generator and the RigNet modes used). A frame whose file is an intact PNG of the right size with
the same digest is skipped; anything else (missing, truncated, an older rig state) is rendered again. Files are
written atomically, so a cancelled or killed run leaves only complete frames.

Progress and cancel: `job.done`/`job.total`/`job.skipped` are updated as frames arrive (read them from a
timer); `job.cancel()` from another thread stops the engine's batch after its current generator call.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import compat, png
from .client import Client, EngineError
from .layout import DEFAULT_MODES, targets

TEXT_KEY = "stylerig"


def parse_frames(spec: str) -> list[int]:
    """"1-120", "1-120:2" (step), "1,5,9-12" -> frame numbers in order, without repeats."""
    out: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        rng, _, step = part.partition(":")
        a, sep, b = rng.partition("-")
        if sep and a and b:
            lo, hi, st = int(a), int(b), int(step or 1)
            if st <= 0 or hi < lo:
                raise ValueError(f"bad frame range {part!r}")
            out.extend(range(lo, hi + 1, st))
        else:
            out.append(int(rng))
    seen: set[int] = set()
    return [f for f in out if not (f in seen or seen.add(f))]  # type: ignore[func-returns-value]


@dataclass
class BatchJob:
    out_dir: Path
    frames: list[int]
    params: np.ndarray  # (N, D) float32
    face: dict  # {"seed", "psi"} and "rest" when the rig was matched (rig.face_spec)
    size: int | None = None  # None: the generator's resolution
    modes: tuple[str, ...] = DEFAULT_MODES
    prefix: str = "frame_"
    final_quality: bool = False  # closed-loop editing at the engine: seconds per frame, closer to the rig
    done: int = 0
    skipped: int = 0
    total: int = 0
    status: str = "ready"  # ready | running | done | cancelled | failed
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    modes_used: tuple[str, ...] = ()
    seconds: float = 0.0
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _request: tuple[Client, int] | None = field(default=None, repr=False)

    @classmethod
    def from_scene(cls, scene, rig, out_dir, frames: Iterable[int] | None = None, **kw) -> BatchJob:
        """Collect the rig's parameters at every frame (scene.frame_set; main thread)."""
        from .rig import collect_frames, face_spec

        frames = list(range(scene.frame_start, scene.frame_end + 1) if frames is None else frames)
        params = collect_frames(scene, rig, frames).astype(np.float32)
        return cls(Path(out_dir), frames, params, face_spec(rig), **kw)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.params = np.asarray(self.params, np.float32).reshape(len(self.frames), -1)
        self.total = len(self.frames)

    def frame_path(self, frame: int) -> Path:
        return self.out_dir / f"{self.prefix}{frame:04d}.png"

    def frame_paths(self) -> list[Path]:
        return [self.frame_path(f) for f in self.frames]

    def digest(self, i: int, engine: str, size: int, modes: Sequence[str]) -> str:
        h = hashlib.sha256()
        what = {"face": self.face, "engine": engine, "size": size, "modes": list(modes)}
        if self.final_quality:  # only then, so frames rendered before the option existed stay valid
            what["final_quality"] = True
        h.update(json.dumps(what, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.params[i], "<f4").tobytes())
        return h.hexdigest()

    def is_valid(self, i: int, engine: str, size: int, modes: Sequence[str]) -> bool:
        info = png.png_info(self.frame_path(self.frames[i]))
        return (info is not None and info["width"] == size and info["height"] == size
                and info["text"].get(TEXT_KEY) == self.digest(i, engine, size, modes))

    def cancel(self) -> None:
        """Stop soon (from any thread): the engine stops after its current generator call."""
        self._cancel.set()
        req = self._request
        if req is not None:
            try:
                req[0].cancel(req[1])
            except EngineError:
                pass

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self, client: Client, on_frame: Callable[[BatchJob, int], None] | None = None) -> BatchJob:
        """Render the frames not already valid on disk; blocking (run it in a thread from a UI)."""
        t0 = time.perf_counter()
        self.status, self.error, self.done, self.skipped = "running", None, 0, 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        handle = None
        try:
            info = client.info()
            available = set(info.get("edit_modes") or ())
            self.modes_used = tuple(m for m in self.modes if m in available)
            missing = [m for m in self.modes if m not in available]
            if missing:
                self.notes.append(f"the engine has no RigNet for {', '.join(missing)}: those rig changes are not "
                                  "rendered" + ("; frames show the face as generated" if not self.modes_used else ""))
            engine = str((info.get("generator") or {}).get("name"))
            size = int(self.size or (info.get("generator") or {})["resolution"])
            todo = [i for i in range(self.total) if not self.is_valid(i, engine, size, self.modes_used)]
            self.skipped = self.total - len(todo)
            if todo and not self.cancelled:
                handle = client.new_face(int(self.face["seed"]), float(self.face.get("psi", 0.7)))
                tg = targets(self.params[todo], self.modes_used) if self.modes_used else None
                digests = {self.frames[i]: self.digest(i, engine, size, self.modes_used) for i in todo}
                frames = client.batch_render(handle, tg, size=size, format="rgba8",
                                             frame_ids=[self.frames[i] for i in todo],
                                             on_start=lambda rid: setattr(self, "_request", (client, rid)),
                                             final_quality=self.final_quality,
                                             rest=self.face.get("rest") if tg else None)
                for fr in frames:
                    png.write_png(self.frame_path(fr.frame), fr.image, {TEXT_KEY: digests[fr.frame]})
                    self.done += 1
                    if on_frame is not None:
                        on_frame(self, fr.frame)
                    if self.cancelled:
                        frames.close()  # leaving the loop cancels the rest at the engine
                        break
            self.status = "cancelled" if self.cancelled else "done"
        except EngineError as e:
            if e.code == "cancelled" or self.cancelled:
                self.status = "cancelled"
            else:
                self.status, self.error = "failed", str(e)
        except OSError as e:
            self.status, self.error = "failed", str(e)
        except Exception as e:  # noqa: BLE001 - whatever goes wrong, the job ends as failed and says why
            self.status, self.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            self._request = None
            if handle is not None and client.error is None and not client.closed:
                try:
                    client.release(handle)
                except EngineError:
                    pass
            self.seconds = time.perf_counter() - t0
        return self

    @property
    def progress(self) -> float:
        return (self.skipped + self.done) / self.total if self.total else 1.0

    def summary(self) -> str:
        s = f"{self.status}: {self.done} rendered, {self.skipped} already there, of {self.total}"
        if self.error:
            s += f" ({self.error})"
        return s


def encode_mp4(paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, *, fps: float = 24.0) -> Path:
    """An H.264 MP4 of a PNG sequence with Blender's own FFmpeg: a temporary Video Sequencer scene with one
    image strip, rendered as a movie (main thread; works headless). Returns the written path."""
    import bpy

    files = [Path(p) for p in paths]
    out = Path(out_path)
    if not files:
        raise ValueError("no frames to encode")
    first = png.png_info(files[0])
    if first is None:
        raise ValueError(f"{files[0]} is not a complete PNG")
    w, h = first["width"] + first["width"] % 2, first["height"] + first["height"] % 2  # H.264 wants even sizes
    scene = bpy.data.scenes.new("stylerig-encode")
    try:
        editor = scene.sequence_editor_create()
        strips = compat.sequencer_strips(editor)
        strip = strips.new_image(name="frames", filepath=str(files[0]), channel=1, frame_start=1)
        for p in files[1:]:
            strip.elements.append(p.name)  # type: ignore[attr-defined]
        strip.directory = str(files[0].parent) + os.sep  # type: ignore[attr-defined]
        scene.frame_start, scene.frame_end = 1, len(files)
        r = scene.render
        r.resolution_x, r.resolution_y, r.resolution_percentage = w, h, 100
        r.fps = max(1, round(fps))
        r.fps_base = r.fps / float(fps)
        scene.view_settings.view_transform = "Standard"  # frames are display-ready sRGB: no tone mapping
        compat.set_movie_output(r.image_settings, "FFMPEG")
        r.ffmpeg.format = "MPEG4"
        r.ffmpeg.codec = "H264"
        r.ffmpeg.constant_rate_factor = "HIGH"
        tmp = out.with_name(f".{out.stem}-encoding-")
        r.filepath = str(tmp)
        r.use_file_extension = True
        bpy.ops.render.render(animation=True, scene=scene.name)
        written = sorted(out.parent.glob(tmp.name + "*"), key=lambda p: p.stat().st_mtime)
        if not written:
            raise RuntimeError("Blender's FFmpeg output wrote no file")
        os.replace(written[-1], out)
        return out
    finally:
        bpy.data.scenes.remove(scene)
