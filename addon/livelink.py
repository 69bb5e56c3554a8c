"""Import a facial performance recorded with Epic's Live Link Face app (ARKit): its CSV -> shape-key and head
rotation keyframes on the rig.

The CSV has a header row `Timecode,BlendShapeCount,EyeBlinkLeft,...,TongueOut,HeadYaw,HeadPitch,HeadRoll,
LeftEyeYaw,...` and one row per captured frame; Timecode is `HH:MM:SS:FF.fff` (FF = frame at the capture rate,
.fff its fraction). ARKit curve names map to the model's blendshape names by rule:

    EyeBlinkLeft -> eyeBlink_L,  MouthSmileRight -> mouthSmile_R,  JawOpen -> jawOpen,
    BrowInnerUp -> browInnerUp, else browInnerUp_L + browInnerUp_R when the model splits it (ICT does),
    CheekPuff -> cheekPuff (or cheekPuff_L + _R)

HeadYaw/HeadPitch/HeadRoll (radians) drive the head bone: yaw -> yaw, pitch -> pitch, roll -> roll, each times
a sign (HEAD_SIGNS, options of the importer) since recordings differ in their conventions. Eye rotations are
known but not used (the eyeLook* blendshapes carry the gaze). Any other column is reported, never fatal.

Parsing and mapping are pure (no bpy); `apply_take` writes F-curves.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import compat

HEAD_COLUMNS = ("HeadPitch", "HeadYaw", "HeadRoll")  # -> rotation (pitch, yaw, roll)
HEAD_SIGNS = (1.0, 1.0, 1.0)
EYE_COLUMNS = ("LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
META_COLUMNS = ("Timecode", "BlendShapeCount")
STANDARD_RATES = (24.0, 25.0, 30.0, 48.0, 50.0, 60.0, 120.0)


@dataclass
class Take:
    times: np.ndarray  # (N,) seconds from the first row
    curves: dict[str, np.ndarray]  # CSV column -> (N,) values
    rate: float  # capture frame rate (frames/s) used for the timecodes
    warnings: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0


def parse_timecode(tc: str, rate: float) -> float:
    """"HH:MM:SS:FF.fff" (or HH:MM:SS.fff) -> seconds."""
    parts = tc.strip().split(":")
    if len(parts) == 4:
        h, m, s, f = parts
        return int(h) * 3600 + int(m) * 60 + int(s) + float(f) / rate
    if len(parts) == 3:
        h, m, s = parts
        return int(h) * 3600 + int(m) * 60 + float(s)
    raise ValueError(f"bad timecode {tc!r}")


def guess_rate(timecodes: Sequence[str]) -> float | None:
    """The capture rate from the frame field of the timecodes (its largest value + 1, rounded up to a standard
    rate), when the take spans a second boundary; None otherwise."""
    frames, seconds = [], set()
    for tc in timecodes:
        parts = tc.strip().split(":")
        if len(parts) == 4:
            frames.append(float(parts[3]))
            seconds.add(tuple(parts[:3]))
    if len(seconds) < 2 or not frames:
        return None
    top = math.floor(max(frames)) + 1
    return next((r for r in STANDARD_RATES if r >= top), float(top))


def read_csv(path: str | Path, rate: float | None = None) -> Take:
    """Parse a Live Link Face CSV. `rate`: capture rate for the timecodes (default: guessed, else 60)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty CSV")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if not body:
        raise ValueError(f"{path}: no data rows")
    warnings: list[str] = []
    tc_col = header.index("Timecode") if "Timecode" in header else None
    if tc_col is not None:
        stamps = [r[tc_col] for r in body]
        rate = rate or guess_rate(stamps) or 60.0
        times = np.array([parse_timecode(s, rate) for s in stamps])
        times -= times[0]
        if np.any(np.diff(times) < 0):
            warnings.append("timecodes go backwards (a take across midnight?); using row order at the capture rate")
            times = np.arange(len(body)) / rate
    else:
        rate = rate or 60.0
        warnings.append(f"no Timecode column: rows taken as consecutive frames at {rate:g} frames/s")
        times = np.arange(len(body)) / rate
    curves: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        if name in META_COLUMNS or not name:
            continue
        vals = np.full(len(body), np.nan)
        for i, r in enumerate(body):
            try:
                vals[i] = float(r[j])
            except (ValueError, IndexError):
                pass
        bad = int(np.isnan(vals).sum())
        if bad == len(vals):
            warnings.append(f"column {name!r} has no numbers; ignored")
            continue
        if bad:
            warnings.append(f"column {name!r}: {bad} unreadable value(s) interpolated")
            ok = ~np.isnan(vals)
            vals = np.interp(np.arange(len(vals)), np.flatnonzero(ok), vals[ok])
        curves[name] = vals
    return Take(times, curves, float(rate), warnings)


def arkit_to_model(column: str) -> list[str]:
    """Candidate model names of an ARKit curve, best first: EyeBlinkLeft -> [eyeBlinkLeft, eyeBlink_L],
    JawRight -> [jawRight, jaw_R] (Left/Right is a side for most curves, a direction for jaw and mouth)."""
    name = column[:1].lower() + column[1:]
    out = [name]
    m = re.fullmatch(r"(.*?)(Left|Right)", name)
    if m:
        out.append(m.group(1) + ("_L" if m.group(2) == "Left" else "_R"))
    return out


@dataclass
class Mapping:
    shapes: dict[str, list[str]]  # CSV column -> model blendshape names
    head: dict[str, int]  # CSV column -> rotation index (0 pitch, 1 yaw, 2 roll)
    unused: list[str]  # known columns this rig does not use (eye rotations, blendshapes the model lacks)
    unknown: list[str]  # columns that are neither

    def report(self) -> str:
        lines = [f"{len(self.shapes)} blendshape curves, {len(self.head)} head rotation curves"]
        if self.unused:
            lines.append("not used: " + ", ".join(self.unused))
        if self.unknown:
            lines.append("unknown columns (ignored): " + ", ".join(self.unknown))
        return "; ".join(lines)


def map_columns(columns: Iterable[str], model_names: Sequence[str]) -> Mapping:
    names = set(model_names)
    shapes: dict[str, list[str]] = {}
    head: dict[str, int] = {}
    unused: list[str] = []
    unknown: list[str] = []
    for col in columns:
        if col in HEAD_COLUMNS:
            head[col] = HEAD_COLUMNS.index(col)
            continue
        if col in EYE_COLUMNS:
            unused.append(col)
            continue
        candidates = arkit_to_model(col)
        found = next((c for c in candidates if c in names), None)
        base = candidates[0]
        if found is not None:
            shapes[col] = [found]
        elif f"{base}_L" in names and f"{base}_R" in names:
            shapes[col] = [f"{base}_L", f"{base}_R"]
        elif col in ARKIT_NAMES:
            unused.append(col)  # e.g. TongueOut on a model without a tongue shape
        else:
            unknown.append(col)
    return Mapping(shapes, head, unused, unknown)


def resample(take: Take, scene_fps: float, start_frame: int = 1) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One sample per scene frame (linear interpolation of the take): (frames (M,), {column: (M,)})."""
    n = math.floor(take.duration * scene_fps + 1e-6) + 1
    t = np.arange(n) / scene_fps
    return start_frame + np.arange(n), {k: np.interp(t, take.times, v) for k, v in take.curves.items()}


def apply_take(rig, take: Take, *, scene_fps: float, start_frame: int = 1, head: bool = True,
               head_signs: Sequence[float] = HEAD_SIGNS, action_name: str | None = None) -> Mapping:
    """Keyframe the rig's shape keys and head bone from `take` (one key per scene frame). Returns the mapping
    (with what was unused or unknown)."""
    shape_keys = rig.face.data.shape_keys
    mapping = map_columns(take.curves, [kb.name for kb in shape_keys.key_blocks])
    frames, samples = resample(take, scene_fps, start_frame)

    for col, targets in mapping.shapes.items():
        for name in targets:
            _write_fcurve(shape_keys, f'key_blocks["{name}"].value', 0, frames,
                          np.clip(samples[col], 0.0, 1.0), action_name)
    if head and mapping.head:
        pb = rig.armature.pose.bones["head"]
        pb.rotation_mode = "XYZ"
        for col, index in mapping.head.items():
            _write_fcurve(rig.armature, 'pose.bones["head"].rotation_euler', index, frames,
                          head_signs[index] * samples[col], action_name)
    return mapping


def _write_fcurve(owner, data_path: str, index: int, frames: np.ndarray, values: np.ndarray,
                  action_name: str | None) -> None:
    """Replace the keyframes of one F-curve of `owner` (an ID) by (frames, values) in one go."""
    if owner.animation_data is None:
        owner.animation_data_create()
    if owner.animation_data.action is None:
        # keyframe_insert creates the action (and, in Blender 4.4+, its slot and layer) the usual way
        current = owner.path_resolve(data_path)
        owner.keyframe_insert(data_path, index=index if _is_array(current) else -1, frame=float(frames[0]))
        if action_name and owner.animation_data.action is not None:
            owner.animation_data.action.name = action_name
    fc = _find_fcurve(owner, data_path, index)
    if fc is None:
        owner.keyframe_insert(data_path, index=index if _is_array(owner.path_resolve(data_path)) else -1,
                              frame=float(frames[0]))
        fc = _find_fcurve(owner, data_path, index)
    assert fc is not None, f"no F-curve for {data_path}[{index}]"
    fc.keyframe_points.clear()
    fc.keyframe_points.add(len(frames))
    co = np.empty(2 * len(frames), np.float32)
    co[0::2], co[1::2] = frames, values
    fc.keyframe_points.foreach_set("co", co)
    fc.keyframe_points.foreach_set("interpolation", np.full(len(frames), 2, np.int32))  # LINEAR
    fc.update()


def _is_array(value) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, str)


def _find_fcurve(owner, data_path: str, index: int):
    action = owner.animation_data.action
    if action is None:
        return None
    for fc in compat.action_fcurves(owner, action):
        if fc.data_path == data_path and (fc.array_index == index or not _is_array(owner.path_resolve(data_path))):
            return fc
    return None


# The 52 ARKit blendshape curves of Live Link Face, in its column order.
ARKIT_NAMES = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose",
    "MouthFunnel", "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight",
    "MouthFrownLeft", "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft",
    "MouthStretchRight", "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper",
    "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft",
    "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight",
    "CheekPuff", "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
)
