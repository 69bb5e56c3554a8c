"""Live preview: the rig's parameters stream to the engine (latest wins) and the newest image comes back into a
float Image that an Image Editor shows.

The logic is one object with four steps, each callable directly (tests, scripts; Blender's timers do not run
headless):

    preview = LivePreview(connect, size=256)
    preview.submit(rig)       # collect the rig's parameters and hand them to the background sender (never blocks)
    preview.poll()            # the newest finished frame, if any, written into the Image (main thread)
    preview.status_text()     # "live · 12.0 frames/s · 85 ms", "engine unreachable — retrying", ...

In Blender, `start()` hooks it up: depsgraph-update and frame-change handlers call submit(), a timer calls
poll() on the main thread. The background sender is streaming.StreamingRenderer: it reconnects by itself when the
engine dies and comes back (re-creating the face from its seed), and re-sends the latest request.

An engine that is away is not an error (the status line says so and the sender retries). Anything else that
raises in a handler, the timer or the sender thread stops the preview: handlers and timer are removed, the
reason is kept in `last_error` (the panel shows it) and "Start live preview" works again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .client import Client
from .streaming import RenderResult, StreamingRenderer
from .layout import DEFAULT_MODES, targets

IMAGE_NAME = "StyleRig Preview"
TICK = 1 / 30


class LivePreview:
    def __init__(self, connect: Callable[[], Client], *, size: int = 256, modes: Sequence[str] = DEFAULT_MODES,
                 image_name: str = IMAGE_NAME, reconnect_interval: float = 1.0):
        self.size = int(size)
        self.modes = tuple(modes)
        self.image_name = image_name
        self.stream = StreamingRenderer(connect, size=self.size, format="float16", colorspace="linear",
                                        origin="bottom", slot="viewport", reconnect_interval=reconnect_interval)
        self._last: tuple[bytes, str, tuple[str, ...]] | None = None  # what was submitted last
        self._last_request: tuple[dict, np.ndarray] | None = None
        self.last_seq: int | None = None  # sequence number of the newest submission (re-submissions included)
        self._engine_modes: tuple[str, ...] | None = None
        self._arrivals: deque[float] = deque(maxlen=30)
        self.latency: float | None = None
        self.frames = 0
        self.last_result: RenderResult | None = None

    # ---- collect -> submit -----------------------------------------------------------------------------
    def engine_modes(self) -> tuple[str, ...] | None:
        """The edit modes of the engine connected now (hello capabilities), else the last ones known."""
        client = self.stream.client
        if client is not None and client.error is None:
            self._engine_modes = tuple(client.capabilities.get("edit_modes") or ())
        return self._engine_modes

    def modes_used(self) -> tuple[str, ...]:
        available = self.engine_modes() or ()
        return tuple(m for m in self.modes if m in available)

    def submit(self, rig: Any, *, update: bool = False) -> int | None:
        """Read the rig (rig.read_params) and submit it unless nothing changed; returns the request's sequence
        number or None. `update`: evaluate the depsgraph first (not inside a depsgraph handler)."""
        from .rig import face_spec, read_params

        return self.submit_params(face_spec(rig), read_params(rig, update=update))

    def submit_params(self, face: dict, p: np.ndarray, *, force: bool = False) -> int | None:
        p = np.asarray(p, np.float32)
        modes = self.modes_used()
        key = (p.tobytes(), repr(sorted(face.items())), modes)
        if not force and key == self._last:
            return None
        self._last = key
        self._last_request = (face, p)
        self.last_seq = self.stream.submit(face, targets(p, modes) if modes else None)
        return self.last_seq

    # ---- poll -> pixels -----------------------------------------------------------------------------------
    def poll(self) -> RenderResult | None:
        """Take the newest finished frame (if any) and write it into the Image. Main thread only."""
        if self._last_request is not None and self._last is not None and self.modes_used() != self._last[2]:
            self.submit_params(*self._last_request)  # the engine (re)connected with other RigNets
        result = self.stream.poll()
        if result is None:
            return None
        self.write_pixels(result.image)
        now = time.perf_counter()
        self._arrivals.append(now)
        self.latency = result.latency
        self.frames += 1
        self.last_result = result
        return result

    def write_pixels(self, image: np.ndarray) -> Any:
        import bpy

        a = np.asarray(image, np.float32)  # (S, S, 4), rows from the bottom, linear
        h, w = a.shape[:2]
        img = bpy.data.images.get(self.image_name)
        if img is None or not img.is_float:
            if img is not None:
                bpy.data.images.remove(img)
            img = bpy.data.images.new(self.image_name, w, h, alpha=True, float_buffer=True)
        elif tuple(img.size) != (w, h):
            img.scale(w, h)
        img.pixels.foreach_set(a.ravel())  # type: ignore[arg-type]
        img.update()
        return img

    # ---- status -----------------------------------------------------------------------------------------
    @property
    def fps(self) -> float:
        a = self._arrivals
        if len(a) < 2 or time.perf_counter() - a[-1] > 2.0:
            return 0.0
        return (len(a) - 1) / max(a[-1] - a[0], 1e-6)

    def status_text(self) -> str:
        s = self.stream
        if s.status == "connecting" and s.last_error is None:
            return "connecting to the engine..."
        if s.status != "connected":
            err = s.last_error
            why = f" ({err})" if err is not None else ""
            return f"engine unreachable{why}; retrying every {s.reconnect_interval:g} s"
        parts = ["live"]
        if self.fps:
            parts.append(f"{self.fps:.1f} frames/s")
        if self.latency is not None:
            parts.append(f"{self.latency * 1000:.0f} ms")
        missing = [m for m in self.modes if m not in (self.engine_modes() or ())]
        if missing:
            parts.append("no RigNet for " + ", ".join(missing) + ": showing the face as generated")
        if s.last_error is not None and s.stats.get("errors"):
            parts.append(f"last error: {s.last_error}")
        return " · ".join(parts)

    def close(self) -> None:
        self.stream.close()


# ---- Blender hookup -----------------------------------------------------------------------------------------
_preview: LivePreview | None = None
_rig_name: str | None = None
last_error: str | None = None  # why the last preview stopped on its own (shown by the panel)


def active() -> LivePreview | None:
    return _preview


def start(connect: Callable[[], Client], rig_name: str, *, size: int = 256,
          modes: Sequence[str] = DEFAULT_MODES) -> LivePreview:
    """Start the live preview of the rig named `rig_name` (handlers + a main-thread timer)."""
    import bpy

    global _preview, _rig_name, last_error
    stop()
    last_error = None
    _preview = preview = LivePreview(connect, size=size, modes=modes)
    _rig_name = rig_name
    try:
        bpy.app.handlers.depsgraph_update_post.append(_on_change)
        bpy.app.handlers.frame_change_post.append(_on_change)
        bpy.app.handlers.load_pre.append(_on_load)
        if not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=TICK)
        _submit_current(update=True)
    except BaseException:
        stop()  # nothing half-started stays behind
        raise
    return preview


def stop() -> None:
    import bpy

    global _preview
    for handlers in (bpy.app.handlers.depsgraph_update_post, bpy.app.handlers.frame_change_post,
                     bpy.app.handlers.load_pre):
        for fn in (_on_change, _on_load):
            while fn in handlers:
                handlers.remove(fn)
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    if _preview is not None:
        _preview.close()
        _preview = None


def _current_rig():
    import bpy

    from .rig import is_rig, load_rig

    obj = bpy.data.objects.get(_rig_name or "")
    return load_rig(obj) if is_rig(obj) else None  # cheap: the layout is parsed once per description


def _submit_current(update: bool = False) -> None:
    if _preview is None:
        return
    rig = _current_rig()
    if rig is not None:
        _preview.submit(rig, update=update)


def _fail(e: BaseException, where: str) -> None:
    """Stop the preview after an unexpected error and keep the reason for the panel."""
    global last_error
    last_error = f"live preview stopped ({where}): {type(e).__name__}: {e}"
    print(f"stylerig: {last_error}")
    try:
        stop()
    except Exception as e2:  # noqa: BLE001 - stopping must not raise out of a handler or timer either
        print(f"stylerig: stopping the live preview: {e2}")


def _on_change(*_args) -> None:
    try:
        _submit_current()
    except Exception as e:  # noqa: BLE001 - a handler must never break Blender's update loop
        _fail(e, "reading the rig")


def _on_load(*_args) -> None:
    stop()


def _tick() -> float | None:
    import bpy

    if _preview is None:
        return None
    try:
        if _preview.stream.failed:
            raise RuntimeError(f"the sender stopped: {_preview.stream.last_error}")
        if _preview.poll() is not None:
            for window in bpy.context.window_manager.windows:
                for area in window.screen.areas:
                    if area.type in ("IMAGE_EDITOR", "VIEW_3D"):
                        area.tag_redraw()
    except Exception as e:  # noqa: BLE001 - Blender drops a timer that raises: stop cleanly instead
        _fail(e, "showing the image")
        return None
    return TICK
