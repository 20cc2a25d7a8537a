"""The compiled HOG kernel (facelab/ops/hog_native.py): built here, equal to the torch fast path it stands
in for, independent of how the batch is split over threads, and replaced by that path, with the reason
logged, when it cannot be built. Its parity with skimage and the reference runs in test_hog.py (the
`float32_path` fixture runs those tests on both paths)."""

from __future__ import annotations

import logging

import pytest
import torch

from datamodules.synthetic_faces import render_face
from facelab.ops import hog_native
from facelab.ops.hog import hog, hog_cells
from facelab.ops.hog_fast import fast_cell_histograms
from facelab.ops.hog_native import kernel_off, load_kernel


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty facelab cache, so the kernel is built (or fails to build) in this test."""
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path))
    load_kernel.cache_clear()
    yield tmp_path
    load_kernel.cache_clear()


def _faces(count: int, size: int) -> torch.Tensor:
    faces = [torch.from_numpy(render_face(size, seed=3, index=index).image) for index in range(count)]
    return torch.stack(faces).permute(0, 3, 1, 2).float() / 255


def test_the_kernel_builds_once_into_the_cache(fresh_cache):
    assert load_kernel() is not None
    built = list((fresh_cache / "hog_kernel").glob("hog_kernel-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    load_kernel.cache_clear()
    assert load_kernel() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert [path.name for path in (fresh_cache / "hog_kernel").iterdir()] == [built[0].name]  # no temp left


@pytest.mark.parametrize(("orientations", "cell", "size"), [(9, (8, 8), (96, 96)), (12, (8, 6), (70, 61))])
@pytest.mark.parametrize("channels", [3, 1])
def test_kernel_equals_the_torch_fast_path(orientations, cell, size, channels):
    """Same rules, same float32 arithmetic but the angle (a polynomial against torch's SLEEF atan2, each
    about an ulp): equal to float32 rounding on these images, where no pixel sits within an ulp of a bound."""
    images = torch.nn.functional.interpolate(_faces(4, 128), size=size, mode="bilinear")[:, :channels]
    images = images + 0.01 * torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    kernel = load_kernel()
    assert kernel is not None
    got = hog_native.kernel_cell_histograms(kernel, images, orientations, cell)
    with kernel_off():
        expected = fast_cell_histograms(images, orientations, cell)
    assert got.shape == expected.shape == (4, size[0] // cell[0], size[1] // cell[1], orientations)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.sum() > 0


def test_threads_split_the_batch_without_changing_a_bit():
    images = _faces(5, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = hog_cells(images, 9, 8)
        torch.set_num_threads(3)  # 5 images over 3 threads: parts of 1, 2 and 2
        split = hog_cells(images, 9, 8)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, split)
    assert torch.equal(hog_cells(images[3:4], 9, 8)[0], single[3])


def test_an_empty_batch_gives_empty_histograms_on_both_paths():
    images = torch.zeros(0, 3, 24, 16)
    got = hog_cells(images, 9, 8)
    with kernel_off():
        expected = hog_cells(images, 9, 8)
    assert got.shape == expected.shape == (0, 9, 3, 2)


def test_without_a_compiler_the_torch_path_runs_and_says_why(fresh_cache, monkeypatch, caplog):
    images = _faces(2, 64)
    expected = hog(images, 9, 8, 2)
    monkeypatch.setenv("CC", "facelab-no-such-compiler")
    load_kernel.cache_clear()
    with caplog.at_level(logging.INFO, logger="facelab"):
        assert load_kernel() is None
        got = hog(images, 9, 8, 2)
    assert "no C compiler (facelab-no-such-compiler)" in caplog.text
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_a_failed_build_warns_and_falls_back(fresh_cache, monkeypatch, caplog):
    monkeypatch.setenv("CC", "false")  # a "compiler" that exits 1
    load_kernel.cache_clear()
    with caplog.at_level(logging.WARNING, logger="facelab"):
        assert load_kernel() is None
    assert "could not build hog_kernel.c" in caplog.text
    assert not list((fresh_cache / "hog_kernel").glob("*.so"))
