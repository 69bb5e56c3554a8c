"""The project's own per-vertex albedo model for face models that come without one (ICT).

albedo(c) = mean + sum_k c_k * basis_k, linear RGB, c ~ N(0, 1). Components (see docs/face-model.md):

  0 tone_lightness   whole skin, light <-> dark (proportional to the mean skin colour, darker skins more
                     saturated), the dominant axis of human skin colour
  1 tone_warmth      whole skin, olive/yellow (+) <-> pink/rosy (-)
  2 tone_redness     whole skin, ruddy (+) <-> sallow (-)
  3 lips             lip colour: saturated red-pink (+) <-> pale, close to the skin (-)
  4 brows            eyebrow darkness / density (+ darker)
  5 eye_shadow       eyelids and under-eye darkness (+ darker, slightly violet)
  6 cheek_redness    flushed cheeks (+)
  7 stubble          beard shadow on jaw, chin, upper lip and upper neck (+ darker, greyish)
  8 nose_redness     red nose tip and wings (+)
  9 head_neck_shade  neck and scalp darker (+) or lighter (-) than the face

Every basis vector is a colour direction relative to the local mean colour times a smooth mask built on the
neutral mesh from the 68 landmarks. Magnitudes are chosen so that each coefficient alone keeps every channel
of every vertex inside (0, 1) over [-2.5, 2.5], and draws from the prior almost always do (measured in
tests/docs; renderers clamp to [0, 1] anyway). Non-skin parts (sclera, iris and pupil, teeth, gums and tongue,
mouth and eye sockets) have fixed colours in the mean and no basis.
"""

from __future__ import annotations

import numpy as np

ALBEDO_NAMES = ("tone_lightness", "tone_warmth", "tone_redness", "lips", "brows", "eye_shadow", "cheek_redness",
                "stubble", "nose_redness", "head_neck_shade")


def srgb_to_linear(c) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


# Colours are given in sRGB (as one would pick them) and stored linear.
SKIN_SRGB = (0.74, 0.55, 0.45)  # medium skin tone, the mean
SCLERA_SRGB = (0.86, 0.83, 0.80)
IRIS_SRGB = (0.33, 0.22, 0.14)  # brown, the most common iris colour
PUPIL_SRGB = (0.03, 0.03, 0.03)
TEETH_SRGB = (0.88, 0.84, 0.74)
GUMS_SRGB = (0.72, 0.36, 0.38)
MOUTH_SOCKET_SRGB = (0.30, 0.10, 0.10)
EYE_SOCKET_SRGB = (0.18, 0.10, 0.09)

# Relative (to the mean skin colour, per channel) colour directions, one standard deviation each.
DIRECTIONS = {
    "tone_lightness": (0.34, 0.37, 0.38),
    "tone_warmth": (0.02, 0.03, -0.06),
    "tone_redness": (0.05, -0.025, -0.02),
    "lips": (0.04, -0.10, -0.07),
    "brows": (-0.16, -0.17, -0.16),
    "eye_shadow": (-0.06, -0.07, -0.04),
    "cheek_redness": (0.05, -0.06, -0.03),
    "stubble": (-0.10, -0.09, -0.06),
    "nose_redness": (0.05, -0.05, -0.03),
    "head_neck_shade": (-0.06, -0.06, -0.06),
}
# How much of each local term the mean already holds (relative), so both signs of a coefficient look plausible.
MEAN_LOCAL = {
    "lips": (-0.02, -0.30, -0.20),  # lips redder than the skin
    "brows": (-0.42, -0.46, -0.46),  # eyebrows darker than the skin
    "eye_shadow": (-0.06, -0.08, -0.05),
    "cheek_redness": (0.02, -0.03, -0.01),
    "stubble": (-0.03, -0.03, -0.02),
    "nose_redness": (0.02, -0.02, -0.01),
}


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def polyline_distance(points: np.ndarray, line: np.ndarray, closed: bool = False) -> np.ndarray:
    pts = np.vstack([line, line[:1]]) if closed else line
    return np.min([_segment_distance(points, pts[i], pts[i + 1]) for i in range(len(pts) - 1)], axis=0)


def inside_polygon_xy(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule in the XY plane."""
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), dtype=bool)
    n = len(poly)
    for i in range(n):
        (x1, y1), (x2, y2) = poly[i, :2], poly[(i + 1) % n, :2]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < xi)
    return inside


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def region_weights(neutral: np.ndarray, landmarks: np.ndarray, skin: np.ndarray,
                   head_neck: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Smooth [0, 1] masks of the local albedo terms on a neutral mesh in the model frame (cm)."""
    v = np.asarray(neutral, dtype=np.float64)
    lm = v[np.asarray(landmarks)]
    skinf = skin.astype(np.float64)
    front = v[:, 2] > lm[[0, 16], 2].mean() - 2.0  # in front of the ears, roughly
    w: dict[str, np.ndarray] = {}

    # lips: inside the outer lip contour (48-59) seen from the front, soft 1.5 mm edge
    lip_poly = lm[48:60]
    near_mouth = front & (v[:, 2] > lip_poly[:, 2].min() - 1.5)
    d = polyline_distance(v[:, :2], lip_poly[:, :2], closed=True)
    lips = np.where(inside_polygon_xy(v, lip_poly), 1.0, np.exp(-((d / 0.15) ** 2)))
    w["lips"] = lips * near_mouth * skinf

    # brows: bands along 17-21 and 22-26, slightly below the landmarks (they sit on the brows' upper half)
    shift = np.array([0.0, -0.15, 0.0])
    d = np.minimum(polyline_distance(v, lm[17:22] + shift), polyline_distance(v, lm[22:27] + shift))
    w["brows"] = np.exp(-((d / 0.45) ** 2)) * skinf

    # eye surroundings: around the eye contours 36-41, 42-47
    d = np.minimum(polyline_distance(v, lm[36:42], closed=True), polyline_distance(v, lm[42:48], closed=True))
    w["eye_shadow"] = np.exp(-((d / 0.7) ** 2)) * skinf * (1 - w["brows"])

    # cheeks: blobs on the cheek apples (between jaw 1-3, nose wing 31/35, lower eyelid 40-41 / 46-47)
    c_r = lm[[1, 2, 31, 40, 41, 48]].mean(0)
    c_l = lm[[15, 14, 35, 47, 46, 54]].mean(0)
    d = np.minimum(np.linalg.norm(v - c_r, axis=1), np.linalg.norm(v - c_l, axis=1))
    w["cheek_redness"] = np.exp(-((d / 1.8) ** 2)) * skinf * (1 - w["lips"])

    # nose tip and wings
    c = lm[[30, 33, 31, 35]].mean(0)
    w["nose_redness"] = np.exp(-((np.linalg.norm(v - c, axis=1) / 1.1) ** 2)) * skinf

    # stubble: below a line from the nose base over the mouth corners to the jaw at landmarks 2/14,
    # down to the upper neck, in front of the ears
    ax = np.abs(v[:, 0])
    xs = [0.0, abs(lm[48, 0]) + 0.6, abs(lm[2, 0])]
    ys = [lm[33, 1] - 0.15, lm[48, 1] + 1.4, lm[2, 1]]
    y_top = np.interp(ax, xs, ys)
    beard = _smoothstep(0.0, 0.6, y_top - v[:, 1]) * _smoothstep(lm[8, 1] - 6.0, lm[8, 1] - 3.0, v[:, 1])
    skin_all = skinf if head_neck is None else np.maximum(skinf, head_neck.astype(np.float64))
    beard *= front * skin_all * (1 - w["lips"])
    w["stubble"] = beard

    # head and neck, fading into the face over ~1.5 cm
    if head_neck is not None and head_neck.any():
        from scipy.spatial import cKDTree

        d, _ = cKDTree(v[head_neck]).query(v[skin])
        hn = head_neck.astype(np.float64)
        hn[skin] = np.maximum(hn[skin], np.exp(-((d / 1.5) ** 2)))
        w["head_neck_shade"] = hn
    else:
        w["head_neck_shade"] = np.zeros(len(v))
    return {k: np.clip(x, 0.0, 1.0) for k, x in w.items()}


def _fit_sphere(p: np.ndarray) -> np.ndarray:
    a = np.c_[2 * p, np.ones(len(p))]
    x = np.linalg.lstsq(a, (p ** 2).sum(1), rcond=None)[0]
    return x[:3]


def eye_angles(neutral: np.ndarray, sclera: np.ndarray, eyeball: np.ndarray) -> np.ndarray:
    """Per eyeball vertex, the angle (degrees) from the eye's optical axis: the axis runs from the centre of a
    sphere fitted to the sclera to its most forward vertex (the cornea apex). NaN off the eyeballs."""
    out = np.full(len(neutral), np.nan)
    for side in (neutral[:, 0] > 0, neutral[:, 0] <= 0):
        sel = eyeball & side
        if np.count_nonzero(sclera & side) < 4:
            continue
        centre = _fit_sphere(neutral[sclera & side])
        scl = neutral[sclera & side]
        axis = scl[np.argmax(scl[:, 2])] - centre
        axis /= np.linalg.norm(axis)
        d = neutral[sel] - centre
        cosang = (d @ axis) / np.maximum(np.linalg.norm(d, axis=1), 1e-12)
        out[sel] = np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0)))
    return out


# Eye colours by angle from the optical axis (a 12 mm eyeball: pupil ~3.5 mm, iris ~11.7 mm across).
PUPIL_DEG, LIMBUS_DEG, EDGE_DEG = 8.0, 28.0, 2.0


def build_albedo(neutral: np.ndarray, landmarks: np.ndarray, parts: dict[str, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(mean (V, 3), basis (10, V, 3), names) for a mesh in the model frame.

    `parts` holds (V,) bool masks: face, head_neck (skin); optional sclera, iris, eyeball, teeth, gums_tongue,
    mouth_socket, eye_socket for the fixed colours.
    """
    v = np.asarray(neutral, dtype=np.float64)
    n = len(v)
    skin = parts["face"]
    head_neck = parts.get("head_neck", np.zeros(n, bool))
    skin_all = skin | head_neck
    base = srgb_to_linear(SKIN_SRGB)
    w = region_weights(v, landmarks, skin, head_neck)

    rel_mean = np.ones((n, 3))
    for k, direction in MEAN_LOCAL.items():
        rel_mean += w[k][:, None] * np.asarray(direction)
    mean = np.zeros((n, 3))
    mean[skin_all] = rel_mean[skin_all] * base

    basis = np.zeros((len(ALBEDO_NAMES), n, 3))
    for i, name in enumerate(ALBEDO_NAMES):
        mask = skin_all.astype(np.float64) if name.startswith("tone_") else w[name]
        basis[i] = mask[:, None] * (rel_mean * base * np.asarray(DIRECTIONS[name]))
    basis[:, ~skin_all] = 0.0

    def fill(mask_name, srgb, weight=None):
        m = parts.get(mask_name)
        if m is None or not m.any():
            return
        col = srgb_to_linear(srgb)
        if weight is None:
            mean[m] = col
        else:
            mean[m] = (1 - weight[m, None]) * mean[m] + weight[m, None] * col

    fill("mouth_socket", MOUTH_SOCKET_SRGB)
    fill("eye_socket", EYE_SOCKET_SRGB)
    fill("gums_tongue", GUMS_SRGB)
    fill("teeth", TEETH_SRGB)
    if "eyeball" in parts and parts["eyeball"].any():
        # The ICT sclera mesh includes the cornea over the iris (upstream it is textured / transparent there):
        # colour both eyeball layers by the angle from the optical axis, pupil -> iris (darker limbal ring) ->
        # sclera.
        eb = parts["eyeball"]
        ang = eye_angles(v, parts.get("sclera", eb), eb)[eb]
        iris_w = 1.0 - _smoothstep(LIMBUS_DEG - EDGE_DEG / 2, LIMBUS_DEG + EDGE_DEG / 2, ang)
        pupil_w = 1.0 - _smoothstep(PUPIL_DEG - EDGE_DEG / 2, PUPIL_DEG + EDGE_DEG / 2, ang)
        ring = np.exp(-(((ang - (LIMBUS_DEG - 2.5)) / 2.5) ** 2))
        iris_col = srgb_to_linear(IRIS_SRGB) * (1.0 - 0.5 * ring)[:, None]
        col = (1 - iris_w)[:, None] * srgb_to_linear(SCLERA_SRGB) + iris_w[:, None] * iris_col
        col = (1 - pupil_w)[:, None] * col + pupil_w[:, None] * srgb_to_linear(PUPIL_SRGB)
        mean[eb] = col
    mean[~(skin_all | np.any([parts[k] for k in parts if k not in ("face", "head_neck")], axis=0))] = 0.5

    return mean.astype(np.float32), basis.astype(np.float32), list(ALBEDO_NAMES)
