"""Cameras: from model-frame points (centimetres) to pixel coordinates and depth.

Pixel convention (used by the rasteriser, the landmarks and everything downstream):
  * x to the right, y down, origin at the *centre* of the top-left pixel, i.e. pixel (row i, column j)
    has its centre at (x, y) = (j, i) and the image spans [-0.5, W - 0.5] x [-0.5, H - 0.5].
    `round(landmark)` is the (column, row) of the pixel it falls in. This is the convention of OpenCV and
    of the usual 68-point landmark detectors.
  * depth is the distance in front of the camera along its optical axis, in centimetres (> 0 in front).

World / model frame: +X the subject's left, +Y up, +Z out of the face. The camera sits on the +Z side
looking down -Z with its up vector +Y and no rotation, so the subject's left (+X) appears on the viewer's
right (+x in the image) -- a photograph, not a mirror image. Head pose lives in the face parameters
(R, t), never in the camera.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

# Landmark ids (68-point iBUG order) that the FFHQ alignment uses.
_LEFT_EYE = slice(36, 42)  # image-left eye = the subject's right eye
_RIGHT_EYE = slice(42, 48)
_MOUTH_CORNERS = (48, 54)


@dataclass(frozen=True)
class PerspectiveCamera:
    """A pinhole camera for a square image, looking down -Z from `position`.

    Intrinsics: focal length f = focal * image_size pixels (the same in x and y, no skew); principal point
    at the image centre ((image_size - 1) / 2, (image_size - 1) / 2) in the pixel convention above. Because
    the focal length is relative to the image size, one camera frames the same view at every resolution
    (`with_size`). The horizontal field of view is 2 * atan(0.5 / focal).

    Keyword args:
      image_size: width = height of the image in pixels.
      focal: focal length divided by the image size (dimensionless); 2.0 is a 28 degree field of view.
      position: (x, y, z) camera centre in the model frame, centimetres.
      near: points closer than this (cm, along the axis) are not rendered (the rasteriser culls triangles
        with any vertex nearer than `near`; there is no clipping).
    """

    image_size: int
    focal: float = 2.2
    position: tuple[float, float, float] = (0.0, 0.0, 60.0)
    near: float = 1.0

    def __post_init__(self):
        if self.image_size <= 0 or self.focal <= 0:
            raise ValueError(f"bad camera: image_size={self.image_size}, focal={self.focal}")

    @property
    def focal_px(self) -> float:
        return self.focal * self.image_size

    @property
    def principal_point(self) -> float:
        """x = y of the principal point, pixels."""
        return (self.image_size - 1) / 2.0

    @property
    def fov_degrees(self) -> float:
        return float(np.degrees(2 * np.arctan(0.5 / self.focal)))

    def with_size(self, image_size: int) -> PerspectiveCamera:
        """The same view at another resolution."""
        return replace(self, image_size=int(image_size))

    def intrinsics(self) -> np.ndarray:
        """3x3 K for the y-down pixel convention above, acting on (x, -y, -z) camera coordinates."""
        f, c = self.focal_px, self.principal_point
        return np.array([[f, 0, c], [0, f, c], [0, 0, 1]], dtype=np.float64)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) model-frame points (after R v + t) -> (B, V, 3) (x_px, y_px, depth_cm). Differentiable.

        Points behind the camera get a negative depth and meaningless pixel coordinates.
        """
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must be (B, V, 3), got {tuple(points.shape)}")
        px, py, pz = self.position
        depth = pz - points[..., 2]
        # Keep the division finite for points on the camera plane; they are culled by `near` anyway.
        safe = torch.where(depth.abs() < 1e-6, torch.full_like(depth, 1e-6), depth)
        f, c = self.focal_px, self.principal_point
        x = c + f * (points[..., 0] - px) / safe
        y = c - f * (points[..., 1] - py) / safe
        return torch.stack([x, y, depth], dim=-1)

    def unproject(self, xy: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Inverse of `project`: (..., 2) pixels and (...) depths -> (..., 3) model-frame points."""
        px, py, pz = self.position
        f, c = self.focal_px, self.principal_point
        x = (xy[..., 0] - c) * depth / f + px
        y = -(xy[..., 1] - c) * depth / f + py
        return torch.stack([x, y, pz - depth], dim=-1)


def ffhq_alignment(landmarks_2d: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ crop of one face from its 68 2D landmarks (y down): (centre (2,), side length).

    This is the rule of the FFHQ dataset's `align_face` (Karras et al. 2019): centre = eye midpoint moved a
    tenth of the way towards the mouth; side = 2 * max(2 * |eye_to_eye|, 1.8 * |eye_to_mouth|). The crop is
    also rotated to level the eyes; a frontal face needs no rotation.
    """
    lm = np.asarray(landmarks_2d, dtype=np.float64)
    eye_left, eye_right = lm[_LEFT_EYE].mean(0), lm[_RIGHT_EYE].mean(0)
    eye_avg = (eye_left + eye_right) / 2
    mouth_avg = (lm[_MOUTH_CORNERS[0]] + lm[_MOUTH_CORNERS[1]]) / 2
    eye_to_eye, eye_to_mouth = eye_right - eye_left, mouth_avg - eye_avg
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    return eye_avg + 0.1 * eye_to_mouth, 2.0 * half


def portrait_camera(landmarks_3d: np.ndarray, image_size: int, *, distance: float = 55.0,
                    near: float = 1.0) -> PerspectiveCamera:
    """A camera that frames a frontal face the way FFHQ aligns its portraits.

    Keyword args:
      landmarks_3d: (68, 3) model-frame positions of the 68 landmarks of the face at rest (frontal pose).
      image_size: pixels.
      distance: centimetres from the camera to the FFHQ crop centre (between the eyes and the mouth).
      near: see PerspectiveCamera.

    The camera is moved (not rotated) so that the FFHQ crop centre lands on the image centre and the focal
    length is chosen so that the FFHQ crop fills the image; a few fixed-point steps account for perspective.
    With a typical adult face this puts the eyes ~47% down the image, ~25% of the width apart, and the face
    (cheek to cheek) at about half the image width.
    """
    lm = np.asarray(landmarks_3d, dtype=np.float64)
    if lm.shape != (68, 3):
        raise ValueError(f"landmarks_3d must be (68, 3), got {lm.shape}")
    eye_avg = (lm[_LEFT_EYE].mean(0) + lm[_RIGHT_EYE].mean(0)) / 2
    mouth_avg = (lm[_MOUTH_CORNERS[0]] + lm[_MOUTH_CORNERS[1]]) / 2
    centre = eye_avg + 0.1 * (mouth_avg - eye_avg)
    cam = PerspectiveCamera(image_size=image_size, focal=2.0, position=tuple(centre + [0, 0, distance]), near=near)
    pts = torch.as_tensor(lm[None])
    for _ in range(4):
        xy = cam.project(pts)[0, :, :2].numpy()
        c2, side = ffhq_alignment(xy)
        # Move the camera so the 2D crop centre goes to the image centre (at the crop centre's depth) ...
        shift = (c2 - cam.principal_point) * distance / cam.focal_px
        pos = np.array(cam.position) + np.array([shift[0], -shift[1], 0.0])
        # ... and zoom so the crop side becomes the image size.
        cam = replace(cam, position=(float(pos[0]), float(pos[1]), float(pos[2])), focal=cam.focal * image_size / side)
    return cam
