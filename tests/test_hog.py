"""facelab.ops.hog against skimage.feature.hog: descriptors, cell histograms, pictures and errors, for
both the reference path (the tested definition) and the fast path. The fast path against the reference,
its float32 paths and its device placement are in test_hog_fast.py.

Parity is bin for bin on these images. On other images a pixel in about 1e5 can sit within an ulp of
the 45 or 135 degree bound, where numpy's own arctan2 differs between CPUs (see facelab/ops/hog.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.feature._hog as skimage_hog_module
import torch
from skimage import color

from datamodules.synthetic_faces import render_face
from facelab.ops.hog import BLOCK_NORMS, METHODS, hog, hog_cells, render_hog
from tests.hog_images import (
    PARAMS,
    as_batch,
    as_pair,
    hog_images,
    single_thread,  # noqa: F401 (autouse: one thread in this module)
    skimage_reference,
)


@pytest.fixture
def captured_histograms(monkeypatch):
    """The cell histograms skimage computes before normalising, caught from its Cython kernel."""
    captured: list[np.ndarray] = []
    kernel = skimage_hog_module._hoghistogram.hog_histograms

    def spy(*args):
        kernel(*args)
        captured.append(args[-1].copy())  # [n_cells_row, n_cells_col, orientations]

    monkeypatch.setattr(skimage_hog_module._hoghistogram, "hog_histograms", spy)
    return captured


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", BLOCK_NORMS)
@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
@pytest.mark.parametrize(("orientations", "ppc", "cpb", "size"), PARAMS)
def test_hog_matches_skimage(orientations, ppc, cpb, size, gray, norm, method):
    images = hog_images(size, gray)
    out = hog(as_batch(images), orientations, ppc, cpb, norm, method=method)
    assert out.dtype == torch.float64
    for index, image in enumerate(images):
        expected = skimage_reference(image, orientations, ppc, cpb, norm)
        assert out.shape[1:] == expected.shape
        np.testing.assert_allclose(out[index].numpy(), expected, rtol=0, atol=1e-4, err_msg=f"image {index}")
        # Agreement is far tighter than the 1e-4 asked for: only skimage's float32 cell sums differ.
        assert np.abs(out[index].numpy() - expected).max() < 1e-6


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("orientations", "ppc"), [(9, 8), (6, 4), (12, (8, 6)), (7, 5)])
def test_hog_cells_match_skimage_histograms(captured_histograms, orientations, ppc, method):
    colour_images = hog_images((61, 70), gray=False)
    images = [*colour_images, *(color.rgb2gray(image) for image in colour_images)]
    colour, gray = as_batch(images[:4]), as_batch(images[4:])
    cells = [hog_cells(colour, orientations, ppc, method), hog_cells(gray, orientations, ppc, method)]
    cells = torch.cat(cells)
    for index, image in enumerate(images):
        skimage_reference(image, orientations, ppc, 1)
        expected = captured_histograms[-1].transpose(2, 0, 1)  # -> [orientations, rows, cols]
        assert cells.shape[1:] == expected.shape
        # skimage sums each cell in float32: agreement to its precision, not bitwise.
        np.testing.assert_allclose(cells[index].numpy(), expected, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("orientations", [7, 9, 11])
def test_bin_bounds_are_skimage_doubles(captured_histograms, orientations, method):
    """Ramps just either side of each bound k * (180 / n): float32 bounds would bin the inner ones wrong."""
    step = 180.0 / orientations
    for k in range(1, orientations):
        for offset, expected_bin in ((-3e-7, k - 1), (3e-7, k)):
            angle = math.radians(step * k + offset)
            rows, cols = np.mgrid[0:24, 0:24].astype(np.float64)
            ramp = 0.5 * math.sin(angle) * rows + 0.5 * math.cos(angle) * cols  # gradient (sin, cos)
            cells = hog_cells(as_batch([ramp]), orientations, 8, method)[0].numpy()
            skimage_reference(ramp, orientations, 8, 1)
            np.testing.assert_allclose(cells, captured_histograms[-1].transpose(2, 0, 1), rtol=1e-6)
            centre = cells[:, 1, 1]  # interior cell: every pixel has the ramp's gradient
            assert centre.argmax() == expected_bin and np.count_nonzero(centre) == 1


# Gradients (row, col) whose numpy orientation is exactly k * (180 / n) where that double differs from
# 180 * k / n; the last puts an angle just under 180 above the last bound, in no bin at all.
EXACT_BOUNDS = [
    (13, (0.9927088740980495, -0.12053668025532245), 6),
    (17, (0.9618256431728146, 0.27366299007208167), 7),
    (17, (0.5264321628773531, -0.8502171357296096), 14),
    (39, (0.8660254037844342, 0.49999999999999745), 13),
    (39, (5.66553889764794e-16, -1.0000000000000089), None),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("orientations", "gradient", "expected_bin"), EXACT_BOUNDS)
def test_angles_on_a_bound(captured_histograms, orientations, gradient, expected_bin, method):
    image = np.zeros((3, 3))  # only the centre pixel has a gradient
    image[2, 1], image[1, 2] = gradient
    cells = hog_cells(as_batch([image]), orientations, 3, method)[0, :, 0, 0].numpy()
    skimage_reference(image, orientations, 3, 1)
    np.testing.assert_allclose(cells, captured_histograms[-1][0, 0], rtol=1e-7)  # skimage: float32 sums
    expected = np.zeros(orientations)
    if expected_bin is not None:
        expected[expected_bin] = np.hypot(*gradient) / 9
    np.testing.assert_allclose(cells, expected, rtol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", METHODS)
def test_channel_ties_take_the_first_channel(method, dtype):
    """Red varies along columns, green along rows with the same slope: skimage keeps red (orientation 0)."""
    rows, cols = np.mgrid[0:32, 0:32].astype(np.float64)
    image = np.stack([cols, rows, np.zeros_like(rows)], axis=-1)
    # Inside the border only green varies.
    inner = hog_cells(as_batch([image]).to(dtype), 9, 8, method)[0, :, 1:-1, 1:-1]
    assert torch.count_nonzero(inner[1:]) == 0 and torch.all(inner[0] == 2.0)
    descriptor = hog(as_batch([image]), 9, 8, 2, method=method)[0].numpy()
    np.testing.assert_allclose(descriptor, skimage_reference(image, 9, 8, 2), atol=1e-12)


# Two channels whose gradients are the same integer steps swapped, from other base values: equal lengths
# but for the /255 rounding, so np.hypot's last bit picks the channel (and torch.hypot's would differ).
# Per channel: (row + 1, row - 1, col + 1, col - 1) pixel values around a tile's centre, out of 255.
NEAR_TIES = [
    ((201, 178, 44, 50), (190, 196, 153, 130)),
    ((202, 99, 140, 173), (178, 211, 255, 152)),
    ((206, 217, 159, 110), (162, 113, 104, 115)),
    ((244, 133, 158, 177), (232, 251, 140, 29)),
    ((85, 12, 137, 114), (255, 232, 125, 52)),
    ((223, 171, 29, 183), (98, 252, 153, 101)),
]


@pytest.mark.parametrize("method", METHODS)
def test_near_tied_channels_rank_as_numpy(captured_histograms, method):
    image = np.zeros((3, 3 * len(NEAR_TIES), 3))
    for tile, channels in enumerate(NEAR_TIES):
        centre = 3 * tile + 1
        for channel, (row_next, row_prev, col_next, col_prev) in enumerate(channels):
            image[2, centre, channel], image[0, centre, channel] = row_next / 255, row_prev / 255
            image[1, centre + 1, channel], image[1, centre - 1, channel] = col_next / 255, col_prev / 255
    cells = hog_cells(as_batch([image]), 9, 3, method)[0].numpy()
    skimage_reference(image, 9, 3, 1)
    np.testing.assert_allclose(cells, captured_histograms[-1].transpose(2, 0, 1), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    ("orientations", "ppc", "size"),
    [
        (9, 8, (45, 52)),
        (6, (8, 6), (40, 40)),
        (12, 16, (64, 50)),
        (7, (5, 7), (33, 29)),
        (13, (8, 6), (41, 50)),  # 13 and 32 px: lines where Bresenham's error term hits zero
        (9, 32, (70, 64)),
    ],
)
def test_render_hog_equals_skimage_picture(monkeypatch, orientations, ppc, size):
    """skimage draws our cell values (patched into its kernel): the rasterisation must be identical."""
    c_row, c_col = as_pair(ppc)
    rows, cols = size[0] // c_row, size[1] // c_col
    cells = torch.from_numpy(np.random.default_rng(7).random((2, orientations, rows, cols)))

    def kernel_writing(values: np.ndarray):
        def kernel(*args):
            args[-1][...] = values  # skimage's histogram buffer, [rows, cols, orientations]

        return kernel

    pictures = render_hog(cells, ppc)
    assert pictures.shape == (2, 1, rows * c_row, cols * c_col)
    for index in range(2):
        values = cells[index].permute(1, 2, 0).numpy()
        monkeypatch.setattr(skimage_hog_module._hoghistogram, "hog_histograms", kernel_writing(values))
        _, expected = skimage_reference(np.zeros(size), orientations, ppc, 1, visualize=True)
        assert np.array_equal(pictures[index, 0].numpy(), expected[: rows * c_row, : cols * c_col])
        assert not expected[rows * c_row :].any() and not expected[:, cols * c_col :].any()


def test_render_of_hog_cells_matches_skimage_end_to_end():
    images = hog_images((72, 90), gray=False)  # 90 px: the last 2 columns hold no cell and stay black
    pictures = render_hog(hog_cells(as_batch(images), 9, 8), 8)
    assert pictures.shape == (4, 1, 72, 88)
    for index, image in enumerate(images):
        _, expected = skimage_reference(image, 9, 8, 2, visualize=True)
        assert not expected[:, 88:].any()
        # The cell values carry skimage's float32 cell sums, hence a relative tolerance.
        np.testing.assert_allclose(pictures[index, 0].numpy(), expected[:, :88], rtol=1e-5, atol=1e-12)
        assert np.count_nonzero(expected) > 1000


def test_too_small_images_raise_like_skimage():
    with pytest.raises(ValueError, match="too small") as ours:
        hog(torch.zeros(2, 3, 15, 40), 9, 8, 2)
    with pytest.raises(ValueError, match="too small") as theirs:
        skimage_reference(np.zeros((15, 40, 3)), 9, 8, 2)
    assert str(ours.value) == str(theirs.value)
    assert hog(torch.zeros(1, 3, 16, 16), 9, 8, 2).shape == (1, 1, 1, 2, 2, 9)  # exactly one block is fine
    with pytest.raises(ValueError, match="too small"):
        hog(torch.zeros(1, 1, 40, 23), 9, (8, 6), (2, 4))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 2, 32, 32), (1, 4, 32, 32), (1, 1, 1, 32, 32)])
def test_bad_ranks_and_channels_raise(shape):
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        hog(torch.zeros(shape))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        hog_cells(torch.zeros(shape))


def test_bad_arguments_raise():
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(TypeError, match="floating"):
        hog(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="block_norm"):
        hog(images, block_norm="L3")
    with pytest.raises(ValueError, match="pixels_per_cell"):
        hog(images, pixels_per_cell=(8, 0))
    with pytest.raises(ValueError, match="2x2"):
        render_hog(torch.zeros(1, 9, 4, 4), 1)


@pytest.mark.parametrize("norm", BLOCK_NORMS)
@pytest.mark.parametrize(
    ("orientations", "ppc", "cpb", "size"), [(9, 8, 2, 64), (9, 8, 3, 256), (12, 4, 2, 96)]
)
def test_hog_matches_skimage_on_synthetic_faces(orientations, ppc, cpb, size, norm):
    """The embedded default data: flat skin and hard clip-art edges, unlike the photos above."""
    faces = [render_face(size, seed=0, index=index).image / 255.0 for index in range(3)]
    ours = hog(as_batch(faces), orientations, ppc, cpb, norm)
    for face, got in zip(faces, ours, strict=True):
        expected = torch.from_numpy(skimage_reference(face, orientations, ppc, cpb, norm))
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 1e-4
