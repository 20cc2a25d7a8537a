"""Named face points for a scripted drag, from dlib's 68 landmarks or, where dlib finds no face, from a
parsing map (`make demo`'s DragGAN start). Points are [y, x] pixels, DragGAN's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from facelab.ops import align

MOUTH_CORNERS = (48, 54)  # iBUG 68: the image-left and image-right mouth corners


def dlib_points(image: np.ndarray, indices: Sequence[int], upsample: int = 1) -> np.ndarray | None:
    """`[len(indices), 2]` [y, x] of the given iBUG landmarks of the largest face dlib finds in an
    `[H, W, 3]` uint8 image, or None when it finds none."""
    faces = align.detect_faces(image, upsample=upsample)
    if not faces:
        return None
    largest = max(faces, key=lambda points: float(np.ptp(points[:, 0])))  # [68, 2] (x, y)
    return largest[list(indices)][:, ::-1].astype(np.float64)


def parsed_mouth_corners(
    labels: np.ndarray, mouth_classes: Sequence[int], min_pixels: int = 6
) -> np.ndarray | None:
    """`[2, 2]` [y, x] of the image-left and image-right ends of the largest connected mouth region (the
    union of `mouth_classes`, e.g. mouth and both lips) in an `[H, W]` label map: at the region's outermost
    columns, the mean row of its pixels there. None when the region has fewer than `min_pixels` pixels."""
    mouth = np.isin(labels, list(mouth_classes))
    components, count = ndimage.label(mouth)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(mouth, components, index=np.arange(1, count + 1))
    largest = components == 1 + int(np.argmax(sizes))
    if largest.sum() < min_pixels:
        return None
    rows, columns = np.nonzero(largest)
    corners = []
    for column in (columns.min(), columns.max()):
        corners.append((rows[columns == column].mean(), float(column)))
    return np.array(corners, dtype=np.float64)
