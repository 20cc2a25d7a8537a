"""Images and skimage calls shared by the HOG tests (test_hog.py against skimage, test_hog_fast.py the
fast path against the reference)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import color, data, transform
from skimage.feature import hog as skimage_hog

# (orientations, pixels_per_cell, cells_per_block, image size): sizes include non-multiples of the cell.
PARAMS = [
    (9, 8, 2, (64, 64)),
    (6, 4, 1, (67, 90)),
    (12, (8, 6), (2, 3), (100, 83)),
    (9, 16, 3, (53, 128)),
    (12, 4, 3, (40, 37)),
    (6, (8, 6), 2, (75, 61)),
]
RNG_SEED = 1234


def smooth(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Blurred noise in [0, 1]: long gentle gradients, unlike the photos and the raw noise."""
    sigma = (3.0, 3.0, 0.0)[: len(shape)]
    noise = ndimage.gaussian_filter(rng.random(shape), sigma)
    return (noise - noise.min()) / np.ptp(noise)


@functools.cache
def hog_images(size: tuple[int, int], gray: bool) -> tuple[np.ndarray, ...]:
    """Four different float64 images of one size, HWC (or HW when gray), as skimage takes them (cached)."""
    rng = np.random.default_rng(RNG_SEED + size[0] * 1000 + size[1])
    height, width = size
    astronaut = data.astronaut()[20 : 20 + height, 180 : 180 + width] / 255.0  # a crop, quantised
    coffee = transform.resize(data.coffee() / 255.0, size, anti_aliasing=True)  # a resize, not quantised
    if gray:
        camera = data.camera()[100 : 100 + height, 200 : 200 + width] / 255.0
        return camera, color.rgb2gray(coffee), rng.random(size), smooth(size, rng)
    return astronaut, coffee, rng.random((*size, 3)), smooth((*size, 3), rng)


def as_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """HWC / HW numpy images -> [B, C, H, W] float64."""
    chw = [image[None] if image.ndim == 2 else image.transpose(2, 0, 1) for image in images]
    return torch.from_numpy(np.ascontiguousarray(np.stack(chw)))


def as_pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """skimage wants (rows, cols) pairs where ours also takes an int."""
    return (value, value) if isinstance(value, int) else value


def skimage_reference(image: np.ndarray, orientations, ppc, cpb, norm="L2-Hys", **options) -> np.ndarray:
    """skimage's hog, HWC images with channel_axis=-1, 2-D ones without."""
    channel_axis = -1 if image.ndim == 3 else None
    return skimage_hog(
        image,
        orientations,
        as_pair(ppc),
        as_pair(cpb),
        norm,
        feature_vector=False,
        channel_axis=channel_axis,
        **options,
    )


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These tensors are tiny: on a busy 2-core machine OpenMP hand-offs cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
