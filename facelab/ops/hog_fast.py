"""Fast HOG: `hog_reference`'s rules in a handful of vectorised passes per image.

Where the reference path spends its time (the README's HOG section has the measured breakdown):
`bucketize` (a binary search per pixel), `torch.where` (a scalar loop on CPU) in the channel choice,
`hypot` on every channel, `remainder`, int64 index arithmetic, reductions over strided block views, and
fresh tensors larger than the cache on every op. Here instead, per chunk of the batch:

- one subtraction each for the row and column differences of all channels, into one buffer;
- channels ranked by squared magnitude (no hypot per channel), the first maximal channel's gradient
  picked by `lerp` with 0/1 weights, which is exact and vectorised;
- the angle in bins plus half a turn (`n + atan2 * n / pi`, one op), truncated to int32, plus a shift
  for negative angles and a cached map from pixel to its cell's slots: no bucketize, no remainder;
- one `index_add_` of the magnitudes (the square root of the winning squared magnitude) into the
  histogram of the whole batch;
- buffers allocated once per call and reused by every chunk, so the same memory stays in the cache.

Blocks are normalised from per-cell sums added over each block (shifted adds, not a strided reduction),
then written once. On CPU the batch runs in chunks of about a megabyte; on other devices in one piece,
with no host round-trip. The result is not differentiable (callers that need gradients get the
reference path).

Exactness. The cheaper arithmetic can round differently from the reference only where two channels'
squared magnitudes lie within `_TIE_SQUARED` of each other (np.hypot's last bit ranks them) or where an
angle lies within `_NEAR_BOUND` bins of a bound. In float64 those few pixels are redone with the
reference functions, so the histograms equal the reference's up to the order of the sums. float32 is
skimage's float32 mode, where numpy's and torch's last bits differ anyway, and redoes nothing.
"""

from __future__ import annotations

import functools
import math

import torch

from facelab.ops.hog_reference import TIE, orientation_bins, select_channel, work_dtype

__all__ = ["fast_cell_histograms", "fast_normalize_blocks"]

_CHUNK_BYTES = 1 << 20  # input bytes per chunk on CPU (measured: larger chunks fall out of the cache)
_TIE_SQUARED = 4 * TIE  # squared magnitudes double the relative gap, with room for their own rounding
_NEAR_BOUND = 1e-9  # in bins: far above float64 rounding of the angle, far below any real gap


def _slots_per_cell(orientations: int) -> int:
    """Slot s <= n: a non-negative angle of bin s (s = n: 180 degrees, bin 0); slot n + 1 + j: a negative
    angle of bin j; the last slot: a negative angle that skimage's `% 180` rounds to 180, in no bin."""
    return 2 * orientations + 2


@functools.lru_cache(maxsize=32)
def _cell_slots(
    batch: int, height: int, width: int, cell: tuple[int, int], orientations: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each pixel's first slot `[batch, H, W]` (int32, less `orientations`: see `_orientation_slots`), and
    `[H, W]` 1/0 for pixels inside / past the last whole cell, None when there are none past it. Pixels
    past it are counted in the nearest cell with zero weight (skimage's cell loop never visits them)."""
    c_row, c_col = cell
    n_rows, n_cols = height // c_row, width // c_col
    rows = (torch.arange(height, device=device) // c_row).clamp_(max=n_rows - 1)
    cols = (torch.arange(width, device=device) // c_col).clamp_(max=n_cols - 1)
    first = torch.arange(batch, device=device).view(-1, 1, 1) * (n_rows * n_cols)
    cell_index = first + rows.view(-1, 1) * n_cols + cols.view(1, -1)
    slots = (cell_index * _slots_per_cell(orientations) - orientations).to(torch.int32)
    if height == n_rows * c_row and width == n_cols * c_col:
        return slots, None
    inside = (torch.arange(height, device=device) < n_rows * c_row).view(-1, 1)
    inside = inside & (torch.arange(width, device=device) < n_cols * c_col).view(1, -1)
    return slots, inside


class _Scratch:
    """Buffers for one chunk, allocated once per call and reused by every chunk."""

    def __init__(self, chunk: int, channels: int, height: int, width: int, like: torch.Tensor):
        plane = (chunk, height, width)
        self.gradients = like.new_zeros(chunk, channels, 2, height, width)  # borders stay zero, as skimage's
        self.squared = like.new_empty(chunk, channels, height, width)
        self.best = like.new_empty(chunk, 1, height, width)
        self.is_best = like.new_empty(chunk, max(channels - 1, 1), height, width)
        self.chosen = like.new_empty(chunk, 2, height, width)
        self.turns = like.new_empty(plane)
        self.slots = torch.empty(plane, dtype=torch.int32, device=like.device)
        self.negative = torch.empty(plane, dtype=torch.int32, device=like.device)

    def first(self, batch: int) -> _Scratch:
        """The same buffers cut to the first `batch` images (the last chunk may be short)."""
        if batch == self.gradients.shape[0]:
            return self
        cut = object.__new__(_Scratch)
        cut.__dict__.update({name: value[:batch] for name, value in self.__dict__.items()})
        return cut


def _gradients_into(images: torch.Tensor, out: torch.Tensor) -> None:  # [b, C, H, W] -> [b, C, 2, H, W]
    """Central differences of every channel, rows in `out[:, :, 0]` and columns in `out[:, :, 1]`; the
    first and last row (column) of `out` must already be zero, as skimage leaves them."""
    torch.sub(images[..., 2:, :], images[..., :-2, :], out=out[:, :, 0, 1:-1, :])
    torch.sub(images[..., :, 2:], images[..., :, :-2], out=out[:, :, 1, :, 1:-1])


def _dominant_gradient(scratch: _Scratch, exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The first maximal channel's (row, col) gradient `[b, 2, H, W]` and squared magnitude `[b, H, W]`."""
    gradients, squared = scratch.gradients, scratch.squared
    torch.mul(gradients[:, :, 0], gradients[:, :, 0], out=squared)
    squared.addcmul_(gradients[:, :, 1], gradients[:, :, 1])  # [b, C, H, W]
    channels = gradients.shape[1]
    if channels == 1:
        return gradients[:, 0], squared[:, 0]
    best = torch.amax(squared, 1, keepdim=True, out=scratch.best)  # [b, 1, H, W]
    is_best = torch.eq(squared[:, :-1], best, out=scratch.is_best)  # 1.0 or 0.0
    # Earlier channels override later ones, so the first maximal one wins; weights 0 or 1 make lerp exact.
    chosen = torch.lerp(gradients[:, -1], gradients[:, -2], is_best[:, -1:], out=scratch.chosen)
    for channel in reversed(range(channels - 2)):
        torch.lerp(chosen, gradients[:, channel], is_best[:, channel : channel + 1], out=chosen)
    if exact:
        # np.hypot's rounding may rank channels whose squared magnitudes nearly tie the other way round.
        near_tie = (squared >= best * (1 - _TIE_SQUARED)).sum(1) > 1  # [b, H, W]
        if near_tie.any():
            per_pixel = gradients.permute(0, 3, 4, 1, 2)[near_tie]  # [k, C, 2]
            rows, cols = select_channel(per_pixel[..., 0], per_pixel[..., 1])
            chosen[:, 0][near_tie], chosen[:, 1][near_tie] = rows, cols
    return chosen, best[:, 0]


@functools.lru_cache(maxsize=32)
def _scalar(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached 0-dim tensor, so that `value + alpha * tensor` is one op."""
    return torch.tensor(value, dtype=dtype, device=device)


def _orientation_slots(
    chosen: torch.Tensor, scratch: _Scratch, orientations: int, exact: bool
) -> torch.Tensor:  # chosen [b, 2, H, W]
    """Each pixel's slot within its cell `[b, H, W]`, int32, plus `orientations` (see `_slots_per_cell`)."""
    n = orientations
    g_row, g_col = chosen[:, 0], chosen[:, 1]
    theta = torch.atan2(g_row, g_col, out=scratch.turns)
    negative = torch.lt(theta, 0, out=scratch.negative)
    # The angle in bins plus half a turn, in [0, 2n]: for negative angles this rounds as skimage's `% 180`
    # does (`deg + 180`); positive ones it can move only within an ulp of a bound.
    turns = torch.add(_scalar(float(n), theta.dtype, theta.device), theta, alpha=n / math.pi, out=theta)
    slots = scratch.slots.copy_(turns)  # truncation is floor: turns >= 0
    # Negative angles get their own slots: one that rounds up to 180 degrees is in no bin for skimage,
    # while +180 (g_row = +0, g_col < 0) is in bin 0 (180 % 180).
    slots.add_(negative, alpha=2 * n + 1)
    if exact:
        # Where this rounding and the reference's may differ, bin as the reference does.
        near_bound = (turns - turns.round()).abs_() < _NEAR_BOUND
        if near_bound.any():
            bins = orientation_bins(g_row[near_bound], g_col[near_bound], n).int()
            slots[near_bound] = torch.where(bins < n, bins + n, _slots_per_cell(n) - 1 + n)
    return slots


def _fold_slots(hist: torch.Tensor, orientations: int) -> torch.Tensor:  # [..., slots per cell]
    """Slots per cell -> orientation bins (see `_slots_per_cell`); the no-bin slot is dropped."""
    n = orientations
    bins = hist[..., :n] + hist[..., n + 1 : 2 * n + 1]
    bins[..., 0] += hist[..., n]
    return bins


def _chunk_histograms(
    images: torch.Tensor,  # [b, C, H, W] in the work dtype
    scratch: _Scratch,
    orientations: int,
    cell: tuple[int, int],
    hist: torch.Tensor,  # [b * n_cells * slots per cell], zeros, added to
) -> None:
    """Add one chunk's magnitudes into its cells' slots."""
    exact = images.dtype == torch.float64
    batch, _, height, width = images.shape
    _gradients_into(images, scratch.gradients)
    chosen, squared = _dominant_gradient(scratch, exact)
    slots = _orientation_slots(chosen, scratch, orientations, exact)
    # The reference takes torch.hypot of the chosen gradient; in float64 keep its exact magnitudes.
    magnitude = torch.hypot(chosen[:, 1], chosen[:, 0]) if exact else squared.sqrt_()
    cell_slots, inside = _cell_slots(batch, height, width, cell, orientations, images.device)
    if inside is not None:
        magnitude = magnitude * inside
    slots += cell_slots
    hist.index_add_(0, slots.view(-1), magnitude.reshape(-1))


def fast_cell_histograms(
    images: torch.Tensor,  # [B, C, H, W], checked by the caller
    orientations: int,
    cell: tuple[int, int],
) -> torch.Tensor:
    """Per-cell orientation histograms `[B, n_cells_row, n_cells_col, orientations]` in the work dtype."""
    images = images.detach().to(work_dtype(images.dtype))
    batch, channels, height, width = images.shape
    n_rows, n_cols = height // cell[0], width // cell[1]
    chunk = batch
    if images.device.type == "cpu":
        chunk = max(1, min(batch, _CHUNK_BYTES // (channels * height * width * images.element_size())))
    scratch = _Scratch(chunk, channels, height, width, images)
    per_image = n_rows * n_cols * _slots_per_cell(orientations)
    hist = images.new_zeros(batch * per_image)
    for start in range(0, batch, chunk):
        part = images[start : start + chunk]
        piece = hist[start * per_image : (start + len(part)) * per_image]
        _chunk_histograms(part, scratch.first(len(part)), orientations, cell, piece)
    hist = hist.view(batch, n_rows, n_cols, -1)
    return _fold_slots(hist, orientations).div_(cell[0] * cell[1])


def fast_normalize_blocks(
    hist: torch.Tensor,  # [B, n_cells_row, n_cells_col, orientations]
    block: tuple[int, int],
    method: str,
    eps: float,
    clip: float,
) -> torch.Tensor:
    """Normalised blocks `[B, n_blocks_row, n_blocks_col, b_row, b_col, orientations]`: each block's sum
    is a sum of per-cell sums over shifted views, then each block row is written once, contiguously."""
    b_row, b_col = block
    batch, n_rows, n_cols, orientations = hist.shape
    blocks_row, blocks_col = n_rows - b_row + 1, n_cols - b_col + 1
    l1 = method in ("L1", "L1-sqrt")
    per_cell = hist.sum(-1) if l1 else (hist * hist).sum(-1)  # [B, R, C]; cell sums are >= 0: no abs
    per_block = per_cell[:, :blocks_row, :blocks_col].clone()
    for i in range(b_row):
        for j in range(b_col):
            if i or j:
                per_block += per_cell[:, i : i + blocks_row, j : j + blocks_col]
    scale = per_block.add_(eps) if l1 else per_block.add_(eps**2).sqrt_()
    out = hist.new_empty(batch, blocks_row, blocks_col, b_row, b_col * orientations)
    rows = hist.reshape(batch, n_rows, n_cols * orientations)
    for i in range(b_row):
        # Block (r, c)'s cells in its row i lie side by side in cell row r + i: one strided window each.
        windows = rows[:, i : i + blocks_row].unfold(2, b_col * orientations, orientations)
        torch.div(windows, scale[..., None], out=out[:, :, :, i])
    out = out.view(batch, blocks_row, blocks_col, b_row, b_col, orientations)
    if method == "L1-sqrt":
        out.sqrt_()
    elif method == "L2-Hys":
        out.clamp_(max=clip)
        flat = out.view(batch, blocks_row, blocks_col, -1)
        flat.div_((flat * flat).sum(-1, keepdim=True).add_(eps**2).sqrt_())
    return out
