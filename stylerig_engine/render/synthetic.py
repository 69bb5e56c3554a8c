"""A tiny synthetic morphable "head" (an ellipsoid with a nose) for tests and examples.

It is a valid MorphableModel in the engine's conventions (centimetres, +X the subject's left, +Y up, +Z out
of the face, triangles counter-clockwise seen from outside, 68 landmarks in iBUG order placed where a face's
would be) but it is not a face model: no data files, a few hundred vertices, renders in milliseconds.
"""

from __future__ import annotations

import numpy as np

from ..facemodel.model import MorphableModel

RADII = (7.0, 9.5, 8.0)


def _landmark_template() -> np.ndarray:
    """(68, 2) rough (x, y) positions in cm of the iBUG 68 landmarks on a frontal face."""
    pts = []
    t = np.linspace(0, 1, 17)  # jaw, from the subject's right (image left) to the left
    pts += list(zip(-6.0 * np.cos(np.pi * t), 1.5 - 8.0 * np.sin(np.pi * t)))
    pts += [(x, 3.6) for x in np.linspace(-5.0, -1.2, 5)] + [(x, 3.6) for x in np.linspace(1.2, 5.0, 5)]  # brows
    pts += [(0.0, y) for y in np.linspace(2.4, -0.9, 4)]  # nose bridge; 30 = tip
    pts += [(x, -2.0) for x in np.linspace(-1.5, 1.5, 5)]  # nostrils
    a = np.linspace(np.pi, -np.pi, 6, endpoint=False)
    for cx in (-3.0, 3.0):  # eyes: 36-41 subject's right (image left), 42-47 left
        pts += list(zip(cx + 1.3 * np.cos(a), 2.0 + 0.5 * np.sin(a)))
    a = np.linspace(np.pi, -np.pi, 12, endpoint=False)
    pts += list(zip(2.5 * np.cos(a), -4.5 + 1.0 * np.sin(a)))  # outer lip, 48 and 54 the corners
    a = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    pts += list(zip(1.6 * np.cos(a), -4.5 + 0.4 * np.sin(a)))  # inner lip
    out = np.asarray(pts, dtype=np.float64)
    assert out.shape == (68, 2)
    return out


def _bump(x, y, cx, cy, sx, sy):
    return np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def toy_head(n_lat: int = 24, n_lon: int = 32, *, nose: float = 2.0) -> MorphableModel:
    """The synthetic head. Keyword args:
      n_lat, n_lon: rings from the top pole to the bottom pole, and vertices per ring.
      nose: height of the nose bump in centimetres (0 for a plain, convex ellipsoid).
    Expressions: jawOpen, mouthSmile_L, mouthSmile_R, eyeBlink_L, eyeBlink_R (smooth displacements in the
    expected places); identity: 2 modes (width, height); albedo: 1 mode (brightness).
    """
    rx, ry, rz = RADII
    theta = np.linspace(0, np.pi, n_lat + 1)[1:-1]  # polar angle from +Y, poles excluded
    phi = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)  # azimuth, 0 = +Z (the front)
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([rx * np.sin(th) * np.sin(ph), ry * np.cos(th), rz * np.sin(th) * np.cos(ph)], -1).reshape(-1, 3)
    verts = np.concatenate([[[0.0, ry, 0.0]], ring, [[0.0, -ry, 0.0]]])
    top, bottom = 0, len(verts) - 1
    tris = []

    def vid(i, j):
        return 1 + i * n_lon + (j % n_lon)

    for j in range(n_lon):  # counter-clockwise seen from outside
        tris.append((top, vid(0, j), vid(0, j + 1)))
        tris.append((bottom, vid(n_lat - 2, j + 1), vid(n_lat - 2, j)))
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a, b, c, d = vid(i, j), vid(i, j + 1), vid(i + 1, j), vid(i + 1, j + 1)
            tris += [(a, c, d), (a, d, b)]
    triangles = np.asarray(tris, dtype=np.int32)
    x, y, z = verts.T
    front = z > 0
    verts[:, 2] += nose * _bump(x, y, 0.0, -0.5, 1.0, 1.8) * front
    v = len(verts)
    x, y, z = verts.T

    def field(dx=0.0, dy=0.0, dz=0.0, w=None):
        out = np.zeros((v, 3))
        out[:, 0], out[:, 1], out[:, 2] = dx * w, dy * w, dz * w
        return out * front[:, None]

    low = np.clip((-3.0 - y) / 4.0, 0, 1)  # below the mouth
    expressions = {
        "jawOpen": field(dy=-2.0, dz=-0.5, w=low),
        "mouthSmile_L": field(dx=0.6, dy=0.6, w=_bump(x, y, 2.5, -4.5, 1.2, 1.0)),
        "mouthSmile_R": field(dx=-0.6, dy=0.6, w=_bump(x, y, -2.5, -4.5, 1.2, 1.0)),
        "eyeBlink_L": field(dz=1.0, w=_bump(x, y, 3.0, 2.0, 1.3, 0.7)),
        "eyeBlink_R": field(dz=1.0, w=_bump(x, y, -3.0, 2.0, 1.3, 0.7)),
    }
    identity = np.stack([verts * [0.05, 0, 0.05], verts * [0, 0.05, 0]])
    # Landmarks: the front vertex nearest to each template point.
    cand = np.nonzero(verts[:, 2] > 0.3 * rz)[0]
    tpl = _landmark_template()
    dist = ((verts[cand, None, :2] - tpl[None]) ** 2).sum(-1)
    landmarks = cand[dist.argmin(0)].astype(np.int32)
    albedo = np.tile(np.array([[0.75, 0.55, 0.45]]), (v, 1))
    albedo[(np.abs(x) > 1.7) & (np.abs(x) < 4.3) & (np.abs(y - 2.0) < 0.6) & front] = (0.9, 0.9, 0.9)  # eyes
    albedo[(np.abs(x) < 2.5) & (np.abs(y + 4.5) < 0.8) & front] = (0.7, 0.3, 0.3)  # lips
    face = front & (y < 5.0) & (y > -8.0)
    eyes = front & (np.abs(x) > 1.7) & (np.abs(x) < 4.3) & (np.abs(y - 2.0) < 0.6)
    model = MorphableModel(
        name="toy-head", neutral=verts.astype(np.float32), identity_basis=identity.astype(np.float32),
        expression_basis=np.stack(list(expressions.values())).astype(np.float32),
        expression_names=list(expressions), expression_prior="blendshape",
        albedo_mean=albedo.astype(np.float32), albedo_basis=np.full((1, v, 3), 0.1, np.float32),
        albedo_names=["brightness"], triangles=triangles,
        polygon_start=np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int32),
        polygon_vertices=triangles.reshape(-1).astype(np.int32), uvs=np.zeros((0, 2), np.float32),
        polygon_uvs=np.zeros((0,), np.int32), landmarks=landmarks,
        regions={"face_skin": face & ~eyes, "eyes": eyes, "head_neck": ~face},
        notice="synthetic test model, no data")
    model.validate()
    return model
