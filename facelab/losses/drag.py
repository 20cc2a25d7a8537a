"""DragGAN losses (Pan et al., SIGGRAPH 2023): motion supervision and the fixed-region (mask) term, per item.

As the official renderer after its 2023-07-18 fix (XingangPan/DragGAN `viz/renderer.py` L346-367): for each
handle p farther than 1 px from its target, over the disc q of radius r1 px around p,
L1(F(q).detach(), F(q + d)) averaged over channels and disc pixels, with d the unit direction to the target
and F(q + d) sampled bilinearly (grid_sample, align_corners=True) from the resized features; summed over
handles. The mask term is lambda * mean |F - F0| over the fixed region, only when the region is neither
empty nor everything. Every function returns `[B]`: an item's value reads only that item's tensors.

Disc grid: the renderer measures distances on `torch.linspace(0, h, h)` (L316-318), whose k-th value is
k * h / (h - 1), not k, so its "disc" is the set of pixels k with |k * h / (h - 1) - p| < r1, slightly
off-centre towards the origin. `disc_grid="linspace"` (default) reproduces that set exactly, so the steps are
the official ones; `disc_grid="arange"` is the centred disc the paper describes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facelab.ops.drag import drag_directions, resize_features, resized_windows

DISC_GRIDS = ("linspace", "arange")
LAMBDA_MASK = 20.0  # drag_widget L24, Gradio motion_lambda (L185); the renderer's own default is 10


def _grid_coordinates(indices: torch.Tensor, image_size: int, disc_grid: str) -> torch.Tensor:
    """Coordinates the renderer measures disc distances on, at integer pixel `indices` (any shape)."""
    assert disc_grid in DISC_GRIDS, f"disc_grid must be one of {DISC_GRIDS}, got {disc_grid!r}"
    if disc_grid == "arange":
        return indices.to(torch.float32)
    grid = torch.linspace(0, image_size, image_size).to(indices.device)  # float32, as the renderer builds it
    return grid[indices.clamp(0, image_size - 1)]


def motion_disc(rows: torch.Tensor, cols: torch.Tensor, center: torch.Tensor, radius: int, image_size: int,
          disc_grid: str) -> torch.Tensor:
    """Membership of pixels (rows [..., K, 1], cols [..., 1, K]) in the disc around center [..., 2]."""
    grid_rows = _grid_coordinates(rows, image_size, disc_grid)
    grid_cols = _grid_coordinates(cols, image_size, disc_grid)
    center = center.to(torch.float32)
    offset_y, offset_x = grid_rows - center[..., 0, None, None], grid_cols - center[..., 1, None, None]
    distance = (offset_y**2 + offset_x**2) ** 0.5
    inside = (rows >= 0) & (rows < image_size) & (cols >= 0) & (cols < image_size)
    return (distance < radius) & inside


def _active_points(handle_points, target_points, point_valid):
    """Unit directions [B, N, 2] and which points get a motion term [B, N]: valid and more than 1 px away."""
    direction, distance = drag_directions(handle_points, target_points)
    return direction, point_valid & (distance > 1)


def motion_supervision_loss(
    features: torch.Tensor,       # [B, C, s, s] feature block output (with grad)
    handle_points: torch.Tensor,  # [B, N, 2] long, current (tracked) handles, [y, x]
    target_points: torch.Tensor,  # [B, N, 2] targets, [y, x]
    point_valid: torch.Tensor,    # [B, N] bool
    image_size: int,
    disc_radius: int,             # r1 in pixels: scaled_radius(R1, h)
    disc_grid: str = "linspace",
) -> torch.Tensor:
    """Windowed motion supervision `[B]`: reads only windows of the resized map around the handles."""
    assert disc_radius >= 1, f"the motion disc is empty at radius {disc_radius} px (image too small for r1)"
    direction, active = _active_points(handle_points, target_points, point_valid)
    half = disc_radius + 2  # disc rows lie in [p - r1, p + r1 - 1]; the bilinear sample reaches 2 further
    windows, _ = resized_windows(features, handle_points, half, image_size)  # [B, N, C, K, K]
    batch, points, channels, size, _ = windows.shape
    offsets = torch.arange(-half, half + 1, device=features.device)
    rows = (handle_points[..., 0:1].long() + offsets)[..., :, None]  # [B, N, K, 1]
    cols = (handle_points[..., 1:2].long() + offsets)[..., None, :]  # [B, N, 1, K]
    disc = motion_disc(rows, cols, handle_points, disc_radius, image_size, disc_grid)
    disc = disc & active[..., None, None]  # [B, N, K, K]
    # F(q + d) for every window pixel q: a bilinear sample of the window (zero outside the image, as
    # grid_sample's zero padding on the full map), at window coordinates normalised for align_corners=True.
    local = torch.arange(size, device=features.device, dtype=torch.float32)
    sample_y = (local[:, None] + direction[..., 0, None, None]) / (size - 1) * 2 - 1  # [B, N, K, 1]
    sample_x = (local[None, :] + direction[..., 1, None, None]) / (size - 1) * 2 - 1  # [B, N, 1, K]
    grid = torch.stack(torch.broadcast_tensors(sample_x, sample_y), dim=-1)  # [B, N, K, K, 2] as (x, y)
    shifted = F.grid_sample(windows.flatten(0, 1), grid.flatten(0, 1), mode="bilinear",
                            padding_mode="zeros", align_corners=True).view_as(windows)
    difference = (windows.detach() - shifted).abs().sum(dim=2)  # [B, N, K, K], summed over channels
    disc_pixels = disc.sum(dim=(-2, -1)).clamp(min=1)  # [B, N]
    per_point = (difference * disc).sum(dim=(-2, -1)) / (disc_pixels * channels)
    return (per_point * active).sum(dim=-1)


def motion_supervision_loss_full(resized: torch.Tensor, handle_points: torch.Tensor,
                                 target_points: torch.Tensor, point_valid: torch.Tensor, disc_radius: int,
                                 disc_grid: str = "linspace") -> torch.Tensor:
    """The renderer's motion supervision on the full resized map `[B, C, h, h]`, point by point. `[B]`."""
    assert disc_radius >= 1, f"the motion disc is empty at radius {disc_radius} px (image too small for r1)"
    image_size = resized.shape[-1]
    direction, active = _active_points(handle_points, target_points, point_valid)
    pixels = torch.arange(image_size, device=resized.device)
    losses = [resized.new_zeros(()) for _ in range(resized.shape[0])]
    for item, point in zip(*torch.nonzero(active, as_tuple=True), strict=True):
        disc = motion_disc(pixels[:, None], pixels[None, :], handle_points[item, point], disc_radius,
                           image_size, disc_grid)
        disc_rows, disc_cols = torch.where(disc)
        dy, dx = direction[item, point]
        grid_y = (disc_rows + dy) / (image_size - 1) * 2 - 1
        grid_x = (disc_cols + dx) / (image_size - 1) * 2 - 1
        grid = torch.stack([grid_x, grid_y], dim=-1)[None, None]  # [1, 1, n, 2]
        shifted = F.grid_sample(resized[item : item + 1], grid, align_corners=True)[:, :, 0]  # [1, C, n]
        unshifted = resized[item : item + 1, :, disc_rows, disc_cols].detach()
        losses[item] = losses[item] + F.l1_loss(unshifted, shifted)
    return torch.stack(losses)


def _fixed_region(editable_mask: torch.Tensor):
    """Fixed region `[B, 1, h, w]` (1 - mask; our masks are 1 = may change) and the items it applies to `[B]`:
    the renderer adds the term only when the mask holds both 0 and 1 (L363-367)."""
    fixed = 1 - editable_mask
    flat = fixed.flatten(1)
    return fixed, (flat.amin(dim=1) == 0) & (flat.amax(dim=1) == 1)


def fixed_region_loss(features: torch.Tensor, features0: torch.Tensor, editable_mask: torch.Tensor,
                      lambda_mask: float = LAMBDA_MASK) -> torch.Tensor:
    """lambda * mean over [C, h, w] of |R(F) - R(F0)| on the fixed region, per item `[B]`.

    Exact but cheaper than the renderer's `l1(R(F) * m, R(F0) * m)`: one full-size resize of F - F0 (the
    resize is linear) instead of two, and only for items whose mask applies. The absolute value needs every
    fixed pixel of the resized difference, so this term has no windowed form; without a mask it costs nothing.
    `features`, `features0` `[B, C, s, s]`, `editable_mask` `[B, 1, h, h]` (1 = may change).
    """
    fixed, applies = _fixed_region(editable_mask)
    losses = features.new_zeros(features.shape[0])
    if not bool(applies.any()):
        return losses
    index = torch.nonzero(applies, as_tuple=True)[0]
    change = resize_features(features[index] - features0[index].detach(), editable_mask.shape[-1])
    per_item = (change * fixed[index]).abs().mean(dim=(1, 2, 3))
    return losses.index_put((index,), lambda_mask * per_item)


def fixed_region_loss_full(resized: torch.Tensor, resized0: torch.Tensor, editable_mask: torch.Tensor,
                           lambda_mask: float = LAMBDA_MASK) -> torch.Tensor:
    """The renderer's mask term on full resized maps `[B, C, h, h]`: lambda * l1(R(F) m, R(F0) m). `[B]`."""
    fixed, applies = _fixed_region(editable_mask)
    losses = [resized.new_zeros(()) for _ in range(resized.shape[0])]
    for item in torch.nonzero(applies, as_tuple=True)[0].tolist():
        region = fixed[item : item + 1]
        current, start = resized[item : item + 1] * region, resized0[item : item + 1] * region
        losses[item] = lambda_mask * F.l1_loss(current, start)
    return torch.stack(losses)
