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

from facelab.ops.hog_native import kernel_cell_histograms, load_kernel
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


class _ChunkPlan:
    """The buffers of one chunk and every view the ops write through, made once per call and reused by
    every chunk: per chunk only the arithmetic is dispatched (making a view costs about as much as a
    small op here), and the same memory stays in the cache. float32 RGB writes later results over spent
    ones (the chosen gradient over the last channel's, the angle, its sign and the slots over the squared
    magnitudes); float64 keeps them all for the exact redo of a few pixels."""

    def __init__(
        self, chunk: int, channels: int, height: int, width: int, orientations: int, cell: tuple[int, int],
        like: torch.Tensor,  # [*, C, H, W]: the dtype and device
    ):
        self.exact = exact = like.dtype == torch.float64
        self.orientations = n = orientations
        self.rgb = rgb = channels > 1
        plane = (chunk, height, width)
        int32 = {"dtype": torch.int32, "device": like.device}
        gradients = like.new_zeros(chunk, channels, 2, height, width)  # borders stay zero, as skimage's
        self.gradients, self.g_row, self.g_col = gradients, gradients[:, :, 0], gradients[:, :, 1]
        self.row_out, self.col_out = gradients[:, :, 0, 1:-1, :], gradients[:, :, 1, :, 1:-1]
        # Channel-major, so that each spent channel plane is one contiguous [chunk, H, W] block.
        self.squared = squared = like.new_empty(channels, chunk, height, width).transpose(0, 1)
        reuse = rgb and not exact
        if rgb:
            self.best = like.new_empty(chunk, 1, height, width)
            self.is_best = squared[:, :-1] if reuse else like.new_empty(chunk, channels - 1, height, width)
            self.candidates = squared[:, :-1]
            chosen = gradients[:, -1] if reuse else like.new_empty(chunk, 2, height, width)
            # Earlier channels override later ones, so the first maximal one wins; 0/1 weights: exact.
            self.lerps = [(gradients[:, -1], gradients[:, -2], self.is_best[:, -1:], chosen)]
            for c in reversed(range(channels - 2)):
                self.lerps.append((chosen, gradients[:, c], self.is_best[:, c : c + 1], chosen))
            self.magnitude = self.best[:, 0]
        else:
            chosen, self.magnitude = gradients[:, 0], squared[:, 0]
        self.chosen, self.chosen_row, self.chosen_col = chosen, chosen[:, 0], chosen[:, 1]
        self.theta = squared[:, 2] if reuse else like.new_empty(plane)
        self.negative = squared[:, 0].view(torch.int32) if reuse else torch.empty(plane, **int32)
        self.slots = squared[:, 1].view(torch.int32) if reuse else torch.empty(plane, **int32)
        self.slots_flat, self.magnitude_flat = self.slots.view(-1), self.magnitude.view(-1)
        self.half_turn = torch.tensor(float(n), dtype=like.dtype, device=like.device)
        self.cell_slots, inside = _cell_slots(chunk, height, width, cell, n, like.device)
        self.inside = None if inside is None else inside.to(like.dtype)

    def add_to(self, images: torch.Tensor, hist: torch.Tensor) -> None:  # [chunk, C, H, W] -> [chunk * ...]
        """Add the chunk's magnitudes into its cells' slots in `hist` (flat, zero at first)."""
        n = self.orientations
        torch.sub(images[..., 2:, :], images[..., :-2, :], out=self.row_out)
        torch.sub(images[..., :, 2:], images[..., :, :-2], out=self.col_out)
        torch.mul(self.g_row, self.g_row, out=self.squared)
        self.squared.addcmul_(self.g_col, self.g_col)  # [chunk, C, H, W]
        if self.rgb:
            torch.amax(self.squared, 1, keepdim=True, out=self.best)
            torch.eq(self.candidates, self.best, out=self.is_best)  # 1.0 or 0.0
            for start, end, weight, out in self.lerps:
                torch.lerp(start, end, weight, out=out)
            if self.exact:
                self._rank_near_ties_as_numpy()
        theta = torch.atan2(self.chosen_row, self.chosen_col, out=self.theta)
        torch.lt(theta, 0, out=self.negative)
        # The angle in bins plus half a turn, in [0, 2n]: for negative angles this rounds as skimage's
        # `% 180` does (`deg + 180`); positive ones it can move only within an ulp of a bound.
        turns = torch.add(self.half_turn, theta, alpha=n / math.pi, out=theta)
        self.slots.copy_(turns)  # truncation is floor: turns >= 0
        # Negative angles get their own slots: one that rounds up to 180 degrees is in no bin for skimage,
        # while +180 (g_row = +0, g_col < 0) is in bin 0 (180 % 180).
        self.slots.add_(self.negative, alpha=2 * n + 1)
        self.slots.clamp_(n, 3 * n + 1)  # a NaN angle (non-finite input) must still index its own cell
        self.slots.add_(self.cell_slots)
        if self.exact:
            self._bin_near_bounds_as_reference(turns)
            # The reference takes torch.hypot of the chosen gradient: keep its exact magnitudes.
            torch.hypot(self.chosen_col, self.chosen_row, out=self.magnitude)
        else:
            self.magnitude.sqrt_()
        if self.inside is not None:
            self.magnitude.mul_(self.inside)
        hist.index_add_(0, self.slots_flat, self.magnitude_flat)

    def _rank_near_ties_as_numpy(self) -> None:
        """np.hypot's rounding may rank channels whose squared magnitudes nearly tie the other way round."""
        near_tie = (self.squared >= self.best * (1 - _TIE_SQUARED)).sum(1) > 1  # [chunk, H, W]
        near_tie &= self.best[:, 0] > 0  # flat pixels tie in every channel, and count for nothing
        where = near_tie.nonzero(as_tuple=True)  # found once, then indexed by position
        if where[0].numel():
            image, row, col = where
            per_pixel = self.gradients[image, :, :, row, col]  # [k, C, 2]
            rows, cols = select_channel(per_pixel[..., 0], per_pixel[..., 1])
            self.chosen_row[where], self.chosen_col[where] = rows, cols

    def _bin_near_bounds_as_reference(self, turns: torch.Tensor) -> None:
        """Where this rounding and the reference's may differ, bin as the reference does."""
        n = self.orientations
        near_bound = (turns - turns.round()).abs_() < _NEAR_BOUND
        near_bound &= self.magnitude > 0  # squared still; a zero gradient counts for nothing in any bin
        where = near_bound.nonzero(as_tuple=True)
        if where[0].numel():
            bins = orientation_bins(self.chosen_row[where], self.chosen_col[where], n).int()
            within = torch.where(bins < n, bins, _slots_per_cell(n) - 1)
            self.slots[where] = within + self.cell_slots[where] + n


def _fold_slots(hist: torch.Tensor, orientations: int) -> torch.Tensor:  # [..., slots per cell]
    """Slots per cell -> orientation bins (see `_slots_per_cell`); the no-bin slot is dropped."""
    n = orientations
    bins = hist[..., :n] + hist[..., n + 1 : 2 * n + 1]
    bins[..., 0] += hist[..., n]
    return bins


def fast_cell_histograms(
    images: torch.Tensor,  # [B, C, H, W], checked by the caller
    orientations: int,
    cell: tuple[int, int],
) -> torch.Tensor:
    """Per-cell orientation histograms `[B, n_cells_row, n_cells_col, orientations]` in the work dtype.
    float32 on the CPU goes to the compiled kernel (`hog_native.py`) when it can be built."""
    images = images.detach().to(work_dtype(images.dtype))
    if images.dtype == torch.float32 and images.device.type == "cpu":
        kernel = load_kernel()
        if kernel is not None:
            return kernel_cell_histograms(kernel, images, orientations, cell)
    batch, channels, height, width = images.shape
    n_rows, n_cols = height // cell[0], width // cell[1]
    chunk = batch
    if images.device.type == "cpu":
        chunk = max(1, min(batch, _CHUNK_BYTES // (channels * height * width * images.element_size())))
    plan = _ChunkPlan(chunk, channels, height, width, orientations, cell, images)
    per_image = n_rows * n_cols * _slots_per_cell(orientations)
    hist = images.new_zeros(batch * per_image)
    for start in range(0, batch, chunk):
        part = images[start : start + chunk]
        if len(part) < chunk:  # the last chunk may be short
            plan = _ChunkPlan(len(part), channels, height, width, orientations, cell, images)
        plan.add_to(part, hist[start * per_image : (start + len(part)) * per_image])
    hist = hist.view(batch, n_rows, n_cols, _slots_per_cell(orientations))
    return _fold_slots(hist, orientations).div_(cell[0] * cell[1])


def _sum_last(values: torch.Tensor) -> torch.Tensor:  # [..., k] -> [...]
    """Sum over a short last dim as a matrix-vector product: reductions over a few contiguous values
    pay a loop set-up per row on CPU, the BLAS call does not."""
    return values @ values.new_ones(values.shape[-1])


def fast_normalize_blocks(
    hist: torch.Tensor,  # [B, n_cells_row, n_cells_col, orientations]
    block: tuple[int, int],
    method: str,
    eps: float,
    clip: float,
) -> torch.Tensor:
    """Normalised blocks `[B, n_blocks_row, n_blocks_col, b_row, b_col, orientations]`. Each block's sum
    is a sum of per-cell sums over shifted views (not a reduction over a strided six-dimensional view);
    the blocks are copied out row by row (a block's cells in one cell row lie side by side), then scaled
    in place, contiguously."""
    b_row, b_col = block
    batch, n_rows, n_cols, orientations = hist.shape
    blocks_row, blocks_col = n_rows - b_row + 1, n_cols - b_col + 1
    l1 = method in ("L1", "L1-sqrt")
    per_cell = _sum_last(hist if l1 else hist * hist)  # [B, R, C]; cell sums are >= 0: no abs needed
    per_block = per_cell[:, :blocks_row, :blocks_col].clone()
    for i in range(b_row):
        for j in range(b_col):
            if i or j:
                per_block += per_cell[:, i : i + blocks_row, j : j + blocks_col]
    scale = per_block.add_(eps) if l1 else per_block.add_(eps**2).sqrt_()  # [B, blocks_row, blocks_col]
    out = hist.new_empty(batch, blocks_row, blocks_col, b_row, b_col * orientations)
    rows = hist.reshape(batch, n_rows, n_cols * orientations)
    for i in range(b_row):
        out[:, :, :, i].copy_(rows[:, i : i + blocks_row].unfold(2, b_col * orientations, orientations))
    flat = out.view(batch, blocks_row, blocks_col, -1)
    flat.div_(scale[..., None])
    if method == "L1-sqrt":
        flat.sqrt_()
    elif method == "L2-Hys":
        flat.clamp_(max=clip)
        flat.div_(_sum_last(flat * flat).add_(eps**2).sqrt_()[..., None])
    return out.view(batch, blocks_row, blocks_col, b_row, b_col, orientations)
