"""The fast HOG path against the reference path (every block norm, several parameter sets, batch 1 and
many, float64 and float32), its two float32 implementations (the compiled kernel and the torch path) against
skimage, and its device placement."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from facelab.ops import hog_fast
from facelab.ops.hog import BLOCK_NORMS, hog, hog_cells
from facelab.ops.hog_native import kernel_off
from tests.hog_images import (
    as_batch,
    hog_images,
    single_thread,  # noqa: F401 (autouse: one thread in this module)
    skimage_reference,
)


@pytest.fixture(params=["kernel", "torch"])
def float32_path(request):
    """float32 on the CPU runs the compiled kernel, or the torch fast path where no compiler is found."""
    with kernel_off() if request.param == "torch" else contextlib.nullcontext():
        yield request.param


def test_float32_input_matches_skimage_in_float32(float32_path):
    """float32 works in float32 as skimage does for float32 images; both then differ from float64 alike
    (a channel tie on the astronaut crop flips with the precision, moving one pixel to another bin)."""
    images = hog_images((64, 80), gray=False)
    single = hog(as_batch(images).float(), 9, 8, 2)
    assert single.dtype == torch.float32
    for index, image in enumerate(images):
        expected = skimage_reference(image.astype(np.float32), 9, 8, 2)
        np.testing.assert_allclose(single[index].numpy(), expected, rtol=0, atol=1e-5)
    exact = hog(as_batch(images), 9, 8, 2)
    assert (single.double() - exact).abs().mean() < 1e-4
    half = as_batch(images).half()
    cells = hog_cells(half, 9, 8)  # computed in float32, returned in float16
    assert cells.dtype == torch.float16
    assert torch.allclose(cells.float(), hog_cells(half.float(), 9, 8), rtol=1e-3, atol=1e-6)


# The fast path against the reference path. Sizes include non-multiples of the cell (pixels past the
# last whole cell must count for nothing) and orientations with a bound at 45 or 90 degrees (12, 6).
FAST_PARAMS = [
    (9, 8, 2, (64, 64)),
    (6, 4, 1, (67, 90)),
    (12, (8, 6), (2, 3), (100, 83)),
    (7, 5, 3, (53, 61)),
]


@pytest.mark.parametrize("norm", BLOCK_NORMS)
@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize(("orientations", "ppc", "cpb", "size"), FAST_PARAMS)
def test_fast_path_equals_reference_in_float64(orientations, ppc, cpb, size, batch, gray, norm):
    """Same bins pixel for pixel (the near-tie and near-bound redo included); only the order of the sums
    differs, hence 1e-12 and not bitwise."""
    images = as_batch(hog_images(size, gray))[:batch]
    fast = hog(images, orientations, ppc, cpb, norm, method="fast")
    reference = hog(images, orientations, ppc, cpb, norm, method="reference")
    assert fast.dtype == torch.float64 and fast.shape == reference.shape and fast.is_contiguous()
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)
    cells = hog_cells(images, orientations, ppc, method="fast")
    expected = hog_cells(images, orientations, ppc, method="reference")
    torch.testing.assert_close(cells, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("norm", BLOCK_NORMS)
@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize(("orientations", "ppc", "cpb", "size"), FAST_PARAMS)
def test_fast_path_matches_reference_in_float32(
    orientations, ppc, cpb, size, batch, gray, norm, float32_path
):
    """float32 ranks channels by squared magnitude and rounds the angle in bins, not degrees: the last bit
    differs from the reference's float32 (itself not numpy's), which only a pixel within an ulp of a tie or
    a bound can notice. The quantised photo has such pixels on the 45-degree diagonals, so with a bound
    there (12 orientations) only the unquantised images are compared; with 9, 6 or 7 all four are."""
    first = 2 if orientations % 4 == 0 else 0  # images 2 and 3: the random and the smooth ones
    images = as_batch(hog_images(size, gray))[first : first + batch].float()
    fast = hog(images, orientations, ppc, cpb, norm, method="fast")
    reference = hog(images, orientations, ppc, cpb, norm, method="reference")
    assert fast.dtype == torch.float32 and fast.shape == reference.shape
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    assert (fast - reference).abs().mean() < 1e-6


def test_chunks_of_the_batch_add_up_to_the_whole(monkeypatch):
    """On CPU the batch runs in chunks, the last one short: the result must not depend on the chunking."""
    images = as_batch([*hog_images((61, 70), gray=False), *hog_images((61, 70), gray=False)[:3]])  # 7 images
    whole = hog_cells(images, 9, 8)
    monkeypatch.setattr(hog_fast, "_CHUNK_BYTES", 3 * images[0].numel() * images.element_size())
    chunked = hog_cells(images, 9, 8)  # chunks of 3, 3 and 1
    assert torch.equal(chunked, whole)
    for index in range(len(images)):
        assert torch.equal(hog_cells(images[index : index + 1], 9, 8)[0], whole[index])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fast_path_stays_on_the_device(dtype):
    """Meta tensors carry no data: any read to the host (`.item()`, `.cpu()`, a Python `if` on a tensor)
    or any tensor made on another device would fail. Every output keeps the input's device and dtype."""
    images = torch.empty(3, 3, 70, 61, device="meta", dtype=dtype)
    descriptor = hog(images, 9, (8, 6), 2)
    assert descriptor.device.type == "meta" and descriptor.dtype == dtype
    assert descriptor.shape == (3, 7, 9, 2, 2, 9)
    cells = hog_cells(images[:, :1], 12, 8)
    assert cells.device.type == "meta" and cells.dtype == dtype and cells.shape == (3, 12, 8, 7)


def test_fast_path_reads_nothing_back_to_the_host(monkeypatch, float32_path):
    """The same on real CPU tensors: every way of reading a tensor into Python raises during the call."""
    images = as_batch(hog_images((64, 64), gray=False)).float()
    expected = hog(images, 9, 8, 2, method="reference")

    def forbidden(*args, **kwargs):
        raise AssertionError("host round-trip on the hot path")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    descriptor = hog(images, 9, 8, 2)
    monkeypatch.undo()
    torch.testing.assert_close(descriptor, expected, rtol=0, atol=1e-5)


def test_inputs_that_need_gradients_take_the_differentiableskimage_reference():
    images = as_batch(hog_images((48, 40), gray=False)).requires_grad_()
    cells = hog_cells(images, 9, 8)
    cells.sum().backward()
    assert images.grad is not None  # (NaN where a gradient is zero: hypot's derivative there)
    assert images.grad.nan_to_num().abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(hog_cells(images, 9, 8), cells.detach(), rtol=0, atol=1e-14)


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="method"):
        hog(torch.zeros(1, 3, 16, 16), method="faster")


def test_a_non_finite_pixel_stays_in_its_cell(float32_path):
    """A NaN angle casts to an arbitrary int: it must still land in its own cell, not raise or spill."""
    images = torch.rand(2, 3, 32, 32)
    images[0, 1, 5, 5] = float("nan")
    spoilt = hog_cells(images, 9, 8).isnan().any(1)  # [B, rows, cols]
    assert spoilt[0, 0, 0] and spoilt.sum() == 1
    torch.testing.assert_close(hog_cells(images[1:], 9, 8), hog_cells(images[1:], 9, 8, method="reference"))
