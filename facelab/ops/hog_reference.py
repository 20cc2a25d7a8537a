"""The reference HOG arithmetic: skimage's per-pixel rules, written out plainly (the tested definition).

`reference_cell_histograms` is what `facelab.ops.hog` computes with `method="reference"`; the fast path
(`facelab.ops.hog_fast`) must agree with it and borrows `select_channel` and `orientation_bins` for the
few pixels where its cheaper formulation could round differently.

skimage's arithmetic, reproduced here (skimage 0.26, `_hog.py` and the compiled `_hoghistogram`):

- Gradients are central differences `x[i+1] - x[i-1]`, zero on the first and last row (column).
  With channels, each pixel takes the gradient of the channel with the largest `np.hypot` magnitude,
  the first such channel on ties.
- Orientation is `rad2deg(arctan2(g_row, g_col)) % 180`; bin k holds `[k * (180/n), (k+1) * (180/n))`
  with double bounds, so an angle that rounds to 180 (or above the last bound) falls in no bin.
- A cell sums the magnitudes of exactly its own pixels and divides by the cell area; rows and columns
  past the last whole cell are dropped. skimage accumulates each cell in float32 (its `total` is a C
  float), we in the working dtype, so histograms agree to ~1e-7 relative, not bitwise.

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

import math
from decimal import Decimal, localcontext

import torch

__all__ = ["orientation_bins", "reference_cell_histograms", "select_channel", "work_dtype"]

RAD_TO_DEG = 180.0 / math.pi  # the constant numpy's rad2deg multiplies by
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
TIE = 1e-14  # relative gap under which torch's and glibc's hypot (an ulp apart at most) may rank apart


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (skimage's own precision); everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def bin_bounds(orientations: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The bounds k * (180 / n), k = 0..n, as skimage computes them (a double product per bound)."""
    bounds = [(180.0 / orientations) * k for k in range(orientations + 1)]
    return torch.tensor(bounds, dtype=dtype, device=device)


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
    return (theta * RAD_TO_DEG).remainder(180.0)


def orientation_bins(g_row: torch.Tensor, g_col: torch.Tensor, orientations: int) -> torch.Tensor:
    """Each gradient's bin as a long in [0, orientations]; `orientations` means in no bin (angle 180)."""
    bounds = bin_bounds(orientations, g_row.dtype, g_row.device)
    return torch.bucketize(_orientation(g_row, g_col), bounds, right=True) - 1


def _magnitudes(g_row: torch.Tensor, g_col: torch.Tensor) -> torch.Tensor:  # [N, C, ...] each
    """Per-channel magnitudes, ranked as numpy's wherever two channels nearly tie."""
    magnitude = torch.hypot(g_row, g_col)
    if magnitude.dtype != torch.float64:
        return magnitude
    # torch's hypot is within an ulp of glibc's; only near-ties can rank differently, redo those exactly.
    channels = magnitude.unbind(1)
    tie = torch.zeros_like(channels[0], dtype=torch.bool)
    for index, current in enumerate(channels):
        for previous in channels[:index]:
            tie |= (current - previous).abs() <= TIE * current
    tie = tie.unsqueeze(1).expand_as(magnitude)
    return magnitude.masked_scatter(tie, _hypot(g_row[tie], g_col[tie]))


def select_channel(g_row: torch.Tensor, g_col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column gradients `[N, ...]` of the dominant channel of `[N, C, ...]` ones (first on ties)."""
    rows, cols = g_row[:, 0], g_col[:, 0]
    if g_row.shape[1] > 1:
        magnitude = _magnitudes(g_row, g_col)
        best = magnitude[:, 0]
        for channel in range(1, g_row.shape[1]):  # not argmax(dim=1): strided, and slow on CPU
            better = magnitude[:, channel] > best  # strictly: the first maximum wins, as numpy's argmax
            best = torch.where(better, magnitude[:, channel], best)
            rows = torch.where(better, g_row[:, channel], rows)
            cols = torch.where(better, g_col[:, channel], cols)
    return rows, cols


def channel_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [B, C, H, W]
    """Per-channel central differences `[B, C, H, W]` (rows, then columns), zero on the borders."""
    g_row = torch.zeros_like(images)
    g_col = torch.zeros_like(images)
    g_row[..., 1:-1, :] = images[..., 2:, :] - images[..., :-2, :]
    g_col[..., :, 1:-1] = images[..., :, 2:] - images[..., :, :-2]
    return g_row, g_col


def reference_cell_histograms(
    images: torch.Tensor,  # [B, C, H, W], checked by the caller
    orientations: int,
    cell: tuple[int, int],
) -> torch.Tensor:
    """Per-cell orientation histograms `[B, n_cells_row, n_cells_col, orientations]` in the work dtype."""
    batch, _, height, width = images.shape
    c_row, c_col = cell
    n_rows, n_cols = height // c_row, width // c_col
    g_row, g_col = select_channel(*channel_gradients(images.to(work_dtype(images.dtype))))
    g_row = g_row[:, : n_rows * c_row, : n_cols * c_col]  # skimage's cell loop stops at the last whole cell
    g_col = g_col[:, : n_rows * c_row, : n_cols * c_col]
    magnitude = torch.hypot(g_col, g_row)  # the last ulp moves nothing here, unlike in the channel ranking
    slot = orientation_bins(g_row, g_col, orientations)  # slot `orientations` collects angles past the last
    slots = orientations + 1
    rows = torch.arange(n_rows * c_row, device=images.device) // c_row
    cols = torch.arange(n_cols * c_col, device=images.device) // c_col
    first = torch.arange(batch, device=images.device).view(batch, 1, 1) * (n_rows * n_cols)
    index = (first + rows.view(1, -1, 1) * n_cols + cols.view(1, 1, -1)) * slots + slot
    hist = magnitude.new_zeros(batch * n_rows * n_cols * slots)
    hist.index_add_(0, index.flatten(), magnitude.flatten())
    return hist.view(batch, n_rows, n_cols, slots)[..., :orientations] / (c_row * c_col)
