"""Blender lights <-> the 27 spherical-harmonics illumination coefficients (pure numpy, no bpy).

The engine's lighting (params.py, render/shading.py): shading(n) = albedo * sum_k gamma_k H_k(n) per colour
channel, 9 coefficients x RGB stored coefficient-major, H_0 = 1 (gamma_0 alone is an ambient light).

The rig's lighting is an ambient RGB term plus sun lights. A sun whose direction *towards the light* is d (unit,
model frame: +X subject's left, +Y up, +Z towards the camera) with RGB irradiance E = strength * colour adds
E * g(d) with g_k(d) = pi * Y_0 * Y_k(d) (render/shading.py `sh_directional`), so that the shading it gives is
max(n . d, 0) * E to second order. The ambient a adds a to gamma_0. Forward (lights -> SH) is exact and linear
for any number of suns in any directions:

    gamma = a e_0 + sum_i g(d_i) E_i^T                                   (9 x 3)

Backward (SH -> lights) uses the light *dome*: nine suns in fixed directions (DOME), chosen so that the 9 x 9
matrix B = [g(d_1) ... g(d_9)] is well conditioned (condition number 1.5) and so that a uniform light is a
positive combination of them (u = B^-1 e_0 > 0). Every 27-vector then has exactly one decomposition

    E = B^-1 gamma - u a^T,   a_c = min_i (B^-1 gamma)_ic / u_i

with all light irradiances E >= 0 (in each channel the weakest dome light is off) and the ambient a taking the
rest — negative only when gamma is darker somewhere than a set of real lights can make it. So any
illumination vector round-trips exactly (to float32 storage) through ambient + dome; see docs/blender.md.
"""

from __future__ import annotations

import math

import numpy as np

# Real SH normalisation constants (as render/shading.py).
_Y = (0.5 / math.sqrt(math.pi), math.sqrt(3 / (4 * math.pi)), math.sqrt(15 / (4 * math.pi)),
      math.sqrt(5 / (16 * math.pi)), math.sqrt(15 / (16 * math.pi)))
C1 = 2.0 / math.sqrt(3.0)
C2 = math.sqrt(15.0) / 4.0
C3 = math.sqrt(5.0) / 8.0
C4 = math.sqrt(15.0) / 8.0

# Irradiance (SH units) per unit of Blender sun strength: a white sun of strength 1 lights a surface facing it
# like the engine's directional light of intensity 1.
STRENGTH_TO_IRRADIANCE = 1.0


def direction_from_azimuth_elevation(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector in the model frame: azimuth 0 = towards the camera (+Z), 90 = the subject's left (+X);
    elevation 90 = straight up (+Y)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])


# The dome: one light overhead, four around the head 20 degrees up, four below 40 degrees down between them.
DOME: tuple[tuple[str, float, float], ...] = (
    ("Top", 0.0, 90.0),
    ("Front", 0.0, 20.0),
    ("Left", 90.0, 20.0),
    ("Back", 180.0, 20.0),
    ("Right", 270.0, 20.0),
    ("Front Left Low", 45.0, -40.0),
    ("Back Left Low", 135.0, -40.0),
    ("Back Right Low", 225.0, -40.0),
    ("Front Right Low", 315.0, -40.0),
)
DOME_DIRECTIONS = np.stack([direction_from_azimuth_elevation(a, e) for _, a, e in DOME])


def sh_basis(normals: np.ndarray) -> np.ndarray:
    """(..., 3) unit normals -> (..., 9) irradiance basis H_k(n) with H_0 = 1 (render/shading.py sh_basis)."""
    n = np.asarray(normals, np.float64)
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    return np.stack([np.ones_like(x), C1 * y, C1 * z, C1 * x, C2 * x * y, C2 * y * z, C3 * (3 * z * z - 1),
                     C2 * x * z, C4 * (x * x - y * y)], axis=-1)


def sun_sh(directions: np.ndarray) -> np.ndarray:
    """(N, 3) directions towards the lights (normalised here) -> (9, N): column i = the SH coefficients of a
    unit-irradiance sun from direction i (g(d) = pi Y_0 Y(d))."""
    d = np.asarray(directions, np.float64).reshape(-1, 3)
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("a light direction has zero length")
    x, y, z = (d / norm).T
    yk = np.stack([np.full_like(x, _Y[0]), _Y[1] * y, _Y[1] * z, _Y[1] * x, _Y[2] * x * y, _Y[2] * y * z,
                   _Y[3] * (3 * z * z - 1), _Y[2] * x * z, _Y[4] * (x * x - y * y)])
    return math.pi * _Y[0] * yk


def lights_to_sh(directions: np.ndarray, irradiance: np.ndarray, ambient) -> np.ndarray:
    """Suns (directions (N, 3), RGB irradiance (N, 3)) + ambient RGB -> (27,) illumination, coefficient-major."""
    e = np.asarray(irradiance, np.float64).reshape(-1, 3)
    gamma = sun_sh(directions) @ e if len(e) else np.zeros((9, 3))
    gamma[0] += np.asarray(ambient, np.float64).reshape(3)
    return gamma.reshape(27)


def sh_to_lights(sh, directions: np.ndarray = DOME_DIRECTIONS) -> tuple[np.ndarray, np.ndarray]:
    """(27,) illumination -> (irradiance (9, 3) >= 0, ambient (3,)) on nine suns in `directions` (the dome by
    default) such that lights_to_sh(directions, irradiance, ambient) == sh."""
    gamma = np.asarray(sh, np.float64).reshape(9, 3)
    b = sun_sh(directions)
    if b.shape != (9, 9):
        raise ValueError(f"the inverse needs exactly nine light directions, got {b.shape[1]}")
    e0 = np.linalg.solve(b, gamma)  # (9, 3): lights alone, no ambient
    u = np.linalg.solve(b, np.eye(9)[0])  # the lights that make a uniform unit light
    if np.any(u <= 0):
        raise ValueError("these light directions cannot make a uniform light with positive strengths")
    ambient = (e0 / u[:, None]).min(axis=0)  # the largest uniform part that leaves every light >= 0
    irradiance = np.maximum(e0 - u[:, None] * ambient[None, :], 0.0)
    return irradiance, ambient


def split_irradiance(irradiance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) RGB irradiance >= 0 -> Blender sun strengths (N,) and colours (N, 3) in [0, 1] (the brightest
    channel is 1; white for a light that is off)."""
    e = np.asarray(irradiance, np.float64).reshape(-1, 3) / STRENGTH_TO_IRRADIANCE
    if np.any(e < 0):
        raise ValueError("Blender light colours cannot be negative")
    strength = e.max(axis=1)
    colour = np.ones_like(e)
    on = strength > 0
    colour[on] = e[on] / strength[on, None]
    return strength, colour


def join_irradiance(strength, colour) -> np.ndarray:
    """Blender sun strengths (N,) and colours (N, 3) -> RGB irradiance (N, 3)."""
    return (np.asarray(strength, np.float64).reshape(-1, 1) * np.asarray(colour, np.float64).reshape(-1, 3)
            * STRENGTH_TO_IRRADIANCE)


def shade(normals: np.ndarray, albedo: np.ndarray, sh) -> np.ndarray:
    """Per-vertex linear RGB albedo * sum_k gamma_k H_k(n): (V, 3) normals, (V, 3) albedo, (27,) -> (V, 3)."""
    gamma = np.asarray(sh, np.float64).reshape(9, 3)
    return np.asarray(albedo, np.float64) * (sh_basis(normals) @ gamma)
