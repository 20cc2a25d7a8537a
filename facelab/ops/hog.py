"""Batched Histograms of Oriented Gradients in PyTorch, equal to `skimage.feature.hog`.

`hog` returns, per image, what skimage returns with `feature_vector=False, transform_sqrt=False`;
`hog_cells` the per-cell histograms before block normalisation (the inpainting model's HOG guide);
`render_hog` skimage's `visualize=True` picture. Everything runs on the input's device, batched.

Two paths compute the cell histograms: `method="reference"` (`hog_reference.py`, skimage's rules written
out plainly, the tested definition, with the notes on where numpy's last bits matter) and the default
`method="fast"` (`hog_fast.py`, the same rules in fewer, cheaper passes; equal to the reference in
float64, and to float32 rounding in float32; float32 on the CPU runs as one compiled C pass per image,
`hog_native.py`, where a C compiler is found). Block norms use eps = 1e-5 (L1: `+ eps`, L2: `+ eps**2`
under the root); L2-Hys clips at 0.2 and renormalises.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from facelab.ops.hog_fast import fast_cell_histograms, fast_normalize_blocks
from facelab.ops.hog_reference import reference_cell_histograms

__all__ = ["BLOCK_NORMS", "METHODS", "hog", "hog_cells", "render_hog"]

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
METHODS = ("fast", "reference")
EPS = 1e-5  # skimage's `_hog_normalize_block` default
L2_HYS_CLIP = 0.2


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """An int or a (rows, cols) pair as a checked pair of positive ints."""
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a (rows, cols) pair of them, got {value!r}.")
    return int(pair[0]), int(pair[1])


def _check_images(images: torch.Tensor) -> None:
    """Reject inputs skimage's two call forms (2-D gray, HWC colour) have no counterpart for."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, C, H, W] with C = 1 or 3, got shape {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}.")


def _cell_histograms(
    images: torch.Tensor,  # [B, C, H, W]
    orientations: int,
    cell: tuple[int, int],
    method: str,
) -> torch.Tensor:
    """Per-cell orientation histograms `[B, n_cells_row, n_cells_col, orientations]` in the work dtype."""
    _check_images(images)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if orientations < 1:
        raise ValueError(f"orientations must be at least 1, got {orientations}.")
    height, width = images.shape[-2:]
    if height < cell[0] or width < cell[1]:
        raise ValueError(f"The image ({height}x{width}) is smaller than one {cell[0]}x{cell[1]} cell.")
    # The fast path is not differentiable: a caller asking for gradients gets the reference's.
    if method == "reference" or (images.requires_grad and torch.is_grad_enabled()):
        return reference_cell_histograms(images, orientations, cell)
    return fast_cell_histograms(images, orientations, cell)


def _normalize_blocks(blocks: torch.Tensor, method: str) -> torch.Tensor:  # [..., b_row, b_col, O]
    """skimage's `_hog_normalize_block` over the last three dims of every block at once."""
    dims = (-3, -2, -1)
    if method in ("L1", "L1-sqrt"):
        out = blocks / (blocks.abs().sum(dims, keepdim=True) + EPS)
        return out.sqrt() if method == "L1-sqrt" else out
    out = blocks / (blocks.square().sum(dims, keepdim=True) + EPS**2).sqrt()
    if method == "L2-Hys":
        out = out.clamp(max=L2_HYS_CLIP)
        out = out / (out.square().sum(dims, keepdim=True) + EPS**2).sqrt()
    return out


def hog(
    images: torch.Tensor,  # [B, C, H, W], C = 1 or 3
    orientations: int = 9,
    pixels_per_cell: int | tuple[int, int] = 8,
    cells_per_block: int | tuple[int, int] = 2,
    block_norm: str = "L2-Hys",
    method: str = "fast",
) -> torch.Tensor:
    """HOG descriptors `[B, n_blocks_row, n_blocks_col, cpb_row, cpb_col, orientations]`, as skimage."""
    if block_norm not in BLOCK_NORMS:
        raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {block_norm!r}.")
    _check_images(images)
    c_row, c_col = _pair(pixels_per_cell, "pixels_per_cell")
    b_row, b_col = _pair(cells_per_block, "cells_per_block")
    height, width = images.shape[-2:]
    if height // c_row - b_row + 1 <= 0 or width // c_col - b_col + 1 <= 0:
        raise ValueError(  # skimage's condition and message
            "The input image is too small given the values of pixels_per_cell and cells_per_block. "
            f"It should have at least: {b_row * c_row} rows and {b_col * c_col} cols."
        )
    hist = _cell_histograms(images, orientations, (c_row, c_col), method)  # [B, R, C, O]
    if method == "fast":
        return fast_normalize_blocks(hist, (b_row, b_col), block_norm, EPS, L2_HYS_CLIP).to(images.dtype)
    blocks = hist.unfold(1, b_row, 1).unfold(2, b_col, 1)  # [B, n_blocks_row, n_blocks_col, O, b_row, b_col]
    blocks = blocks.permute(0, 1, 2, 4, 5, 3)
    return _normalize_blocks(blocks, block_norm).to(images.dtype).contiguous()


def hog_cells(
    images: torch.Tensor,  # [B, C, H, W], C = 1 or 3
    orientations: int = 9,
    pixels_per_cell: int | tuple[int, int] = 8,
    method: str = "fast",
) -> torch.Tensor:
    """Per-cell histograms before block normalisation, `[B, orientations, n_cells_row, n_cells_col]`."""
    hist = _cell_histograms(images, orientations, _pair(pixels_per_cell, "pixels_per_cell"), method)
    return hist.permute(0, 3, 1, 2).to(images.dtype).contiguous()


@functools.lru_cache(maxsize=16)
def _line_indices(
    orientations: int, n_rows: int, n_cols: int, c_row: int, c_col: int
) -> tuple[np.ndarray, np.ndarray]:
    """(pixel, source) pairs of skimage's visualisation lines: pixel in `[H * W]`, source in `[R * C * O]`."""
    radius = min(c_row, c_col) // 2 - 1
    # skimage's endpoint arithmetic verbatim: the float rounding (then int() truncation) of centre -/+ dc
    # depends on the centre's magnitude, so lines can differ from cell to cell and are not one stamp.
    midpoints = np.pi * (np.arange(orientations) + 0.5) / orientations
    dr, dc = radius * np.sin(midpoints), radius * np.cos(midpoints)
    centre_r = (np.arange(n_rows) * c_row + c_row // 2).reshape(-1, 1, 1)
    centre_c = (np.arange(n_cols) * c_col + c_col // 2).reshape(1, -1, 1)
    shape = (n_rows, n_cols, orientations)
    r0 = np.broadcast_to(np.trunc(centre_r - dc).astype(np.int64), shape)
    r1 = np.broadcast_to(np.trunc(centre_r + dc).astype(np.int64), shape)
    c0 = np.broadcast_to(np.trunc(centre_c + dr).astype(np.int64), shape)
    c1 = np.broadcast_to(np.trunc(centre_c - dr).astype(np.int64), shape)
    # skimage.draw.line's Bresenham in closed form: step i along the major axis moves the minor axis by
    # floor((2 * minor * i + major) / (2 * major)), which is where its error term d first turns negative.
    d_row, d_col = r1 - r0, c1 - c0
    s_row, s_col = np.where(d_row > 0, 1, -1)[..., None], np.where(d_col > 0, 1, -1)[..., None]
    steep = (np.abs(d_row) > np.abs(d_col))[..., None]
    major = np.maximum(np.abs(d_row), np.abs(d_col))[..., None]
    minor = np.minimum(np.abs(d_row), np.abs(d_col))[..., None]
    step = np.arange(int(major.max()) + 1)
    shift = (2 * minor * step + major) // np.maximum(2 * major, 1)
    rr = r0[..., None] + s_row * np.where(steep, step, shift)
    cc = c0[..., None] + s_col * np.where(steep, shift, step)
    source = np.broadcast_to(np.arange(n_rows * n_cols * orientations).reshape(*shape, 1), rr.shape)
    valid = step <= major  # row-major order keeps skimage's summation order: cell, then orientation
    return (rr * (n_cols * c_col) + cc)[valid], source[valid]


def render_hog(
    cells: torch.Tensor,  # [B, orientations, n_cells_row, n_cells_col]
    pixels_per_cell: int | tuple[int, int] = 8,
) -> torch.Tensor:
    """skimage's hog_image `[B, 1, n_cells_row * ppc_row, n_cells_col * ppc_col]` for these cells."""
    if cells.ndim != 4:
        raise ValueError(f"cells must be [B, orientations, rows, cols], got shape {tuple(cells.shape)}.")
    c_row, c_col = _pair(pixels_per_cell, "pixels_per_cell")
    if min(c_row, c_col) < 2:
        raise ValueError(f"render_hog needs cells of at least 2x2 pixels, got {c_row}x{c_col}.")
    batch, orientations, n_rows, n_cols = cells.shape
    indices = _line_indices(orientations, n_rows, n_cols, c_row, c_col)
    pixel, source = (torch.from_numpy(i).to(cells.device) for i in indices)
    values = cells.permute(0, 2, 3, 1).reshape(batch, -1)[:, source]  # [B, n_line_pixels]
    image = cells.new_zeros(batch, n_rows * c_row * n_cols * c_col).index_add_(1, pixel, values)
    return image.view(batch, 1, n_rows * c_row, n_cols * c_col)
