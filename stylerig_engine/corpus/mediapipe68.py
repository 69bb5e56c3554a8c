"""MediaPipe face mesh (478 points) -> the iBUG 300-W 68-point markup.

No package ships this correspondence, so it is derived here (docs/corpus.md, "The 478 -> 68 table", tells
how). Each iBUG point is one MediaPipe vertex or the midpoint of two. Conventions:

- iBUG numbering is 0-based here (0-16 jaw, 17-21 / 22-26 the subject's right / left brow, 27-30 nose bridge,
  31-35 nose base, 36-41 / 42-47 right / left eye, 48-59 outer lips, 60-67 inner lips). "Right" is the
  subject's right, which is the image's left in an unmirrored photograph; MediaPipe names sides the same way
  (vertex 33 is the subject's right outer eye corner).
- MediaPipe vertex ids are those of the canonical face mesh (0-467; 468-477 are the iris points that
  refine_landmarks adds, none of which is used).
- The table is left-right symmetric: every pair of mirrored iBUG points uses mirrored MediaPipe vertices
  (e.g. 36 <-> 45: 33 <-> 263), which `MIRROR_PAIRS` below lets a test check.

Each row: (iBUG index, MediaPipe vertices, what the iBUG point is, why these vertices).
"""

from __future__ import annotations

import numpy as np

# fmt: off
TABLE: tuple[tuple[int, tuple[int, ...], str], ...] = (
    # Jaw: the visible outline of the face from the subject's right ear to the left one, through the chin.
    # MediaPipe's FACEMESH_FACE_OVAL (152 chin, ..., 127 / 356 at the ears) is that outline on a frontal face;
    # 17 points spaced along it as in 300-W: 0 / 16 at about eye level, 8 at the menton.
    (0,  (127,),      "jaw, top of the right side, at about eye level (oval vertex at the tragus level)"),
    (1,  (234,),      "jaw, right cheek outline below 0"),
    (2,  (93,),       "jaw, right outline at the level of the nose base"),
    (3,  (132,),      "jaw, right outline at the level of the mouth"),
    (4,  (58, 172),   "jaw, right outline at the angle of the mandible (between the two oval vertices there)"),
    (5,  (136, 150),  "jaw, right jawline below the mouth corner"),
    (6,  (149,),      "jaw, right jawline"),
    (7,  (148, 176),  "jaw, right of the chin, halfway between 6 and the menton"),
    (8,  (152,),      "jaw, menton (lowest point of the chin)"),
    (9,  (377, 400),  "jaw, left of the chin (mirror of 7)"),
    (10, (378,),      "jaw, left jawline (mirror of 6)"),
    (11, (365, 379),  "jaw, left jawline below the mouth corner (mirror of 5)"),
    (12, (288, 397),  "jaw, left angle of the mandible (mirror of 4)"),
    (13, (361,),      "jaw, left outline at the level of the mouth (mirror of 3)"),
    (14, (323,),      "jaw, left outline at the level of the nose base (mirror of 2)"),
    (15, (454,),      "jaw, left cheek outline (mirror of 1)"),
    (16, (356,),      "jaw, top of the left side, at about eye level (mirror of 0)"),
    # Brows: 300-W marks the upper edge of the brow, outer to inner on the right, inner to outer on the left.
    # MediaPipe's upper brow line is 70-63-105-66-107 (right) and 336-296-334-293-300 (left).
    (17, (70,),       "right brow, outer end"),
    (18, (63,),       "right brow, upper edge"),
    (19, (105,),      "right brow, upper edge, its highest part"),
    (20, (66,),       "right brow, upper edge"),
    (21, (107,),      "right brow, inner end"),
    (22, (336,),      "left brow, inner end"),
    (23, (296,),      "left brow, upper edge"),
    (24, (334,),      "left brow, upper edge, its highest part"),
    (25, (293,),      "left brow, upper edge"),
    (26, (300,),      "left brow, outer end"),
    # Nose bridge: four points evenly down the ridge from the nasion to the tip. MediaPipe's midline ridge runs
    # 168 (between the eyes), 6, 197, 195, 5, 4, 1; 4 is the most protruding point seen from the front, 1 lies
    # just below it on the tip's underside.
    (27, (168,),      "nasion: the bridge between the eyes"),
    (28, (197,),      "nose ridge, a third of the way to the tip"),
    (29, (195,),      "nose ridge, two thirds of the way to the tip"),
    (30, (4,),        "pronasale: the nose tip"),
    # Nose base: from the right nostril's outer lower edge through the subnasale to the left one. MediaPipe's
    # lower nose outline is 64-98-97-2-326-327-294.
    (31, (98,),       "nose base, right, lower edge of the right nostril wing"),
    (32, (97,),       "nose base, right nostril, between 31 and the subnasale"),
    (33, (2,),        "subnasale: where the columella meets the upper lip"),
    (34, (326,),      "nose base, left nostril (mirror of 32)"),
    (35, (327,),      "nose base, left, lower edge of the left nostril wing (mirror of 31)"),
    # Eyes: outer corner, two points on the upper lid at about 1/3 and 2/3, inner corner, two on the lower lid
    # (clockwise in the image for both eyes). MediaPipe's right eye: corners 33 (outer) and 133 (inner), upper
    # lid 246-161-160-159-158-157-173, lower lid 7-163-144-145-153-154-155; left eye mirrored.
    (36, (33,),       "right eye, outer corner"),
    (37, (160,),      "right eye, upper lid, a third of the way from the outer corner"),
    (38, (158,),      "right eye, upper lid, two thirds of the way"),
    (39, (133,),      "right eye, inner corner"),
    (40, (153,),      "right eye, lower lid, a third of the way from the inner corner"),
    (41, (144,),      "right eye, lower lid, a third of the way from the outer corner"),
    (42, (362,),      "left eye, inner corner"),
    (43, (385,),      "left eye, upper lid, a third of the way from the inner corner"),
    (44, (387,),      "left eye, upper lid, two thirds of the way"),
    (45, (263,),      "left eye, outer corner"),
    (46, (373,),      "left eye, lower lid, a third of the way from the outer corner"),
    (47, (380,),      "left eye, lower lid, a third of the way from the inner corner"),
    # Outer lips: corner 48, upper lip 49-53 (51 the middle of the cupid's bow, 50 / 52 its peaks), corner 54,
    # lower lip 55-59 back to the right (57 its middle). MediaPipe's outer upper lip runs 61-185-40-39-37-0-267-
    # 269-270-409-291 and the lower 61-146-91-181-84-17-314-405-321-375-291.
    (48, (61,),       "right mouth corner"),
    (49, (40,),       "upper lip outline, halfway between the right corner and the bow's peak"),
    (50, (37,),       "upper lip, right peak of the cupid's bow"),
    (51, (0,),        "upper lip, middle of the cupid's bow"),
    (52, (267,),      "upper lip, left peak of the cupid's bow"),
    (53, (270,),      "upper lip outline, halfway to the left corner"),
    (54, (291,),      "left mouth corner"),
    (55, (321,),      "lower lip outline, a third of the way from the left corner"),
    (56, (314, 405),  "lower lip outline, two thirds of the way from the left corner (between two vertices)"),
    (57, (17,),       "lower lip, middle of its lower edge"),
    (58, (84, 181),   "lower lip outline, mirror of 56"),
    (59, (91,),       "lower lip outline, mirror of 55"),
    # Inner lips: the opening of the mouth. MediaPipe's inner upper lip runs 78-191-80-81-82-13-312-311-310-
    # 415-308 and the inner lower 78-95-88-178-87-14-317-402-318-324-308.
    (60, (78,),       "inner right corner of the mouth opening"),
    (61, (81,),       "inner upper lip, right"),
    (62, (13,),       "inner upper lip, middle"),
    (63, (311,),      "inner upper lip, left"),
    (64, (308,),      "inner left corner of the mouth opening"),
    (65, (402,),      "inner lower lip, left"),
    (66, (14,),       "inner lower lip, middle"),
    (67, (178,),      "inner lower lip, right"),
)
# fmt: on

# iBUG points that are each other's mirror image (the rest, on the midline, are their own).
MIRROR_PAIRS: tuple[tuple[int, int], ...] = (
    *((k, 16 - k) for k in range(8)), *((17 + k, 26 - k) for k in range(5)), (31, 35), (32, 34),
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46), (48, 54), (49, 53), (50, 52), (55, 59), (56, 58),
    (60, 64), (61, 63), (65, 67),
)

NUM_MESH_POINTS = 478


def correspondence_matrix(num_points: int = NUM_MESH_POINTS) -> np.ndarray:
    """(68, num_points) float32 weights: ibug68 = matrix @ mesh_points (each row averages its vertices)."""
    m = np.zeros((len(TABLE), num_points), np.float32)
    for k, (i, verts, _) in enumerate(TABLE):
        assert i == k, "TABLE rows must be in iBUG order"
        m[k, list(verts)] = 1.0 / len(verts)
    return m


def mesh_to_ibug68(points: np.ndarray) -> np.ndarray:
    """(..., 478 or 468, D) MediaPipe points -> (..., 68, D) iBUG points."""
    points = np.asarray(points)
    return np.einsum("kn,...nd->...kd", correspondence_matrix(points.shape[-2]), points)
