"""Mask image files: the one reader for masks from datasets and from users, with errors that name the file.

A mask file is black and white; `white_is_hole` says which colour is the hole. What it returns follows the
data contract: float32 with 1 = hole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from facelab.io.images import decode_image

# A mask file is near-binary: at most this share of its pixels may lie in the grey band below (which is
# generous for JPEG residue and anti-aliased edges, and rules out photos and gradients).
MAX_GREY_SHARE = 0.01
GREY_BAND = (64, 191)


class MaskFileError(ValueError):
    """A file decodes as an image but is not a black-and-white mask (a photo or a soft mask, say).
    Undecodable files raise `facelab.io.images.CorruptImageError` instead."""


def read_mask(
    path: str | Path,
    white_is_hole: bool = True,
    threshold: float = 0.5,
    size: int | None = None,
    required_shape: tuple[int, int] | None = None,
    shape_of: str = "the image it masks",
) -> np.ndarray:
    """Decode a mask file to `[H, W]` float32 in {0, 1}, 1 = hole.

    The file must be near-binary at its own resolution (MaskFileError otherwise) and, if `required_shape`
    (height, width) is given, exactly that size (ValueError naming `shape_of` otherwise). With `size` it is
    then stretched to size x size with bilinear interpolation before thresholding at `threshold`, so a
    resized mask has no grey pixels either. A missing file raises FileNotFoundError, an undecodable one
    CorruptImageError.
    """
    path = Path(path)
    gray = decode_image(path, "L", what="mask image")
    grey_share = float(np.mean((gray >= GREY_BAND[0]) & (gray <= GREY_BAND[1])))
    if grey_share > MAX_GREY_SHARE:
        hole_colour = "white" if white_is_hole else "black"
        raise MaskFileError(
            f"{path} is not a binary mask: {grey_share:.1%} of its pixels are grey (values "
            f"{GREY_BAND[0]}-{GREY_BAND[1]}), at most {MAX_GREY_SHARE:.0%} allowed. Is it a photo given as "
            f"a mask? Give a black-and-white image with {hole_colour} = hole (threshold a soft mask first)."
        )
    if required_shape is not None and gray.shape != tuple(required_shape):
        height, width = gray.shape
        raise ValueError(
            f"Mask {path} is {width}x{height} but {shape_of} is {required_shape[1]}x{required_shape[0]}; "
            "give a mask of the same size."
        )
    holes = gray if white_is_hole else 255 - gray
    if size is not None and holes.shape != (size, size):
        holes = np.asarray(Image.fromarray(holes).resize((size, size), Image.BILINEAR))
    return (holes > threshold * 255).astype(np.float32)
