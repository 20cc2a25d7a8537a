"""Batched Histograms of Oriented Gradients in PyTorch, equal to `skimage.feature.hog`.

`hog` returns, per image, what skimage returns with `feature_vector=False, transform_sqrt=False`;
`hog_cells` the per-cell histograms before block normalisation (the inpainting model's HOG guide);
`render_hog` skimage's `visualize=True` picture. Everything runs on the input's device, batched.

skimage's arithmetic, reproduced here (skimage 0.26, `_hog.py` and the compiled `_hoghistogram`):

- Gradients are central differences `x[i+1] - x[i-1]`, zero on the first and last row (column).
  With channels, each pixel takes the gradient of the channel with the largest `np.hypot` magnitude,
  the first such channel on ties.
- Orientation is `rad2deg(arctan2(g_row, g_col)) % 180`; bin k holds `[k * (180/n), (k+1) * (180/n))`
  with double bounds, so an angle that rounds to 180 (or above the last bound) falls in no bin.
- A cell sums the magnitudes of exactly its own pixels and divides by the cell area; rows and columns
  past the last whole cell are dropped. skimage accumulates each cell in float32 (its `total` is a C
  float), we in the working dtype, so histograms agree to ~1e-7 relative, not bitwise.
- Block norms use eps = 1e-5 (L1: `+ eps`, L2: `+ eps**2` under the root); L2-Hys clips at 0.2 and
  renormalises.

Bin decisions flip on one-ulp differences, and quantised images produce them: gradients like 7/255
and -7/255 (not bitwise opposite after the division) lie within an ulp of the 45 and 135 degree bounds,
and channels tie in magnitude. torch's hypot and atan2 differ from numpy's in the last bit, so in
float64 near-tied channels are re-ranked with glibc's hypot arithmetic (np.hypot calls libm), and
near-diagonal angles are rounded correctly, then taken as pi - angle where g_col < 0, the way numpy's
AVX-512 (SVML) arctan2 forms them. That model of SVML is not exact: on skimage's sample images about
one pixel in 1e5 still lands in the neighbouring bin when `orientations` is a multiple of 4 (numpy
without AVX-512 uses glibc's correctly rounded atan2 and disagrees on others). Lower precisions run in
float32, like skimage for float32 images, and agree closely but not bin for bin.
"""

from __future__ import annotations

import functools
import math
from decimal import Decimal, localcontext

import numpy as np
import torch

__all__ = ["BLOCK_NORMS", "hog", "hog_cells", "render_hog"]

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
EPS = 1e-5  # skimage's `_hog_normalize_block` default
L2_HYS_CLIP = 0.2
_RAD_TO_DEG = 180.0 / math.pi  # the constant numpy's rad2deg multiplies by
_PI_DIGITS = Decimal("3.14159265358979323846264338327950288419716939937510")


def _double_double(fraction: float) -> tuple[float, float]:
    """`fraction * pi` as hi + lo floats, for sums that must round once."""
    with localcontext() as context:
        context.prec = 60
        value = _PI_DIGITS * Decimal(fraction)
        hi = float(value)
        return hi, float(value - Decimal(hi))


_PI = _double_double(1.0)
_QUARTER_PI = _double_double(0.25)
_DIAGONAL = 1e-8  # |t| below this: atan(t) = t to far below an ulp of pi/4
_TIE = 1e-14  # relative gap under which torch's and glibc's hypot (an ulp apart at most) may rank apart


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


def _hypot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """glibc's hypot (which np.hypot calls) op for op: Borges' corrected sqrt, without FMA; finite inputs."""
    a, b = a.abs(), b.abs()
    big, small = torch.maximum(a, b), torch.minimum(a, b)
    h = (big * big + small * small).sqrt()
    # One correction step from the residual h^2 - big^2 - small^2, split so that it is computed exactly
    # (C. F. Borges, "An improved algorithm for hypot(a, b)", 2019); the rounding order matters here.
    near = h <= 2.0 * small
    d = torch.where(near, h - small, h - big)
    t1 = torch.where(near, big * (2.0 * d - big), 2.0 * d * (big - 2.0 * small))
    t2 = torch.where(near, (d - 2.0 * (big - small)) * d, (4.0 * d - small) * small + d * d)
    h = h - (t1 + t2) / (2.0 * h)
    return torch.where(small <= big * 2.0**-54, big + small, h)  # also keeps 0/0 out


def _orientation(g_row: torch.Tensor, g_col: torch.Tensor) -> torch.Tensor:
    """skimage's `rad2deg(arctan2(g_row, g_col)) % 180`, in degrees."""
    theta = torch.atan2(g_row, g_col)
    if theta.dtype == torch.float64:
        # Near |g_row| = |g_col| the first-quadrant angle is pi/4 + atan(t) with t tiny and exact enough,
        # so one rounding of the double-double sum is correctly rounded; the other half-plane is then
        # pi - angle, composed as numpy's (SVML) arctan2 does on AVX-512 (glibc would round it once).
        abs_row, abs_col = g_row.abs(), g_col.abs()
        diagonal = (abs_row - abs_col).abs() < _DIAGONAL * (abs_row + abs_col)
        row, col = g_row[diagonal], g_col[diagonal]
        t = (row.abs() - col.abs()) / (row.abs() + col.abs())
        angle = _QUARTER_PI[0] + (_QUARTER_PI[1] + t)
        angle = torch.where(col > 0, angle, _PI[0] + (_PI[1] - angle))
        theta = theta.masked_scatter(diagonal, angle.copysign(row))
    return (theta * _RAD_TO_DEG).remainder(180.0)


def _magnitudes(g_row: torch.Tensor, g_col: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] each
    """Per-channel magnitudes, ranked as numpy's wherever two channels nearly tie."""
    magnitude = torch.hypot(g_row, g_col)
    if magnitude.dtype != torch.float64:
        return magnitude
    # torch's hypot is within an ulp of glibc's; only near-ties can rank differently, redo those exactly.
    channels = magnitude.unbind(1)
    tie = torch.zeros_like(channels[0], dtype=torch.bool)
    for index, current in enumerate(channels):
        for previous in channels[:index]:
            tie |= (current - previous).abs() <= _TIE * current
    tie = tie.unsqueeze(1).expand_as(magnitude)
    return magnitude.masked_scatter(tie, _hypot(g_row[tie], g_col[tie]))


def _gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # images [B, C, H, W]
    """Row and column gradients `[B, H, W]` of the per-pixel dominant channel."""
    g_row = torch.zeros_like(images)
    g_col = torch.zeros_like(images)
    g_row[..., 1:-1, :] = images[..., 2:, :] - images[..., :-2, :]
    g_col[..., :, 1:-1] = images[..., :, 2:] - images[..., :, :-2]
    rows, cols = g_row[:, 0], g_col[:, 0]
    if images.shape[1] > 1:
        magnitude = _magnitudes(g_row, g_col)
        best = magnitude[:, 0]
        for channel in range(1, images.shape[1]):  # not argmax(dim=1): strided, and slow on CPU
            better = magnitude[:, channel] > best  # strictly: the first maximum wins, as numpy's argmax
            best = torch.where(better, magnitude[:, channel], best)
            rows = torch.where(better, g_row[:, channel], rows)
            cols = torch.where(better, g_col[:, channel], cols)
    return rows, cols


def _cell_histograms(
    images: torch.Tensor,  # [B, C, H, W]
    orientations: int,
    cell: tuple[int, int],
) -> torch.Tensor:
    """Per-cell orientation histograms `[B, n_cells_row, n_cells_col, orientations]` in the work dtype."""
    _check_images(images)
    if orientations < 1:
        raise ValueError(f"orientations must be at least 1, got {orientations}.")
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    batch, _, height, width = images.shape
    c_row, c_col = cell
    n_rows, n_cols = height // c_row, width // c_col
    if n_rows == 0 or n_cols == 0:
        raise ValueError(f"The image ({height}x{width}) is smaller than one {c_row}x{c_col} cell.")
    g_row, g_col = _gradients(images.to(work))
    g_row = g_row[:, : n_rows * c_row, : n_cols * c_col]  # skimage's cell loop stops at the last whole cell
    g_col = g_col[:, : n_rows * c_row, : n_cols * c_col]
    magnitude = torch.hypot(g_col, g_row)  # the last ulp moves nothing here, unlike in the channel ranking
    # Bounds k * (180 / n) as skimage computes them; slot `orientations` collects angles past the last.
    bounds = torch.tensor([(180.0 / orientations) * k for k in range(orientations + 1)], dtype=work)
    slot = torch.bucketize(_orientation(g_row, g_col), bounds.to(images.device), right=True) - 1
    slots = orientations + 1
    rows = torch.arange(n_rows * c_row, device=images.device) // c_row
    cols = torch.arange(n_cols * c_col, device=images.device) // c_col
    first = torch.arange(batch, device=images.device).view(batch, 1, 1) * (n_rows * n_cols)
    index = (first + rows.view(1, -1, 1) * n_cols + cols.view(1, 1, -1)) * slots + slot
    hist = magnitude.new_zeros(batch * n_rows * n_cols * slots)
    hist.index_add_(0, index.flatten(), magnitude.flatten())
    return hist.view(batch, n_rows, n_cols, slots)[..., :orientations] / (c_row * c_col)


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
    hist = _cell_histograms(images, orientations, (c_row, c_col))  # [B, R, C, O]
    blocks = hist.unfold(1, b_row, 1).unfold(2, b_col, 1)  # [B, n_blocks_row, n_blocks_col, O, b_row, b_col]
    blocks = blocks.permute(0, 1, 2, 4, 5, 3)
    return _normalize_blocks(blocks, block_norm).to(images.dtype).contiguous()


def hog_cells(
    images: torch.Tensor,  # [B, C, H, W], C = 1 or 3
    orientations: int = 9,
    pixels_per_cell: int | tuple[int, int] = 8,
) -> torch.Tensor:
    """Per-cell histograms before block normalisation, `[B, orientations, n_cells_row, n_cells_col]`."""
    hist = _cell_histograms(images, orientations, _pair(pixels_per_cell, "pixels_per_cell"))
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
