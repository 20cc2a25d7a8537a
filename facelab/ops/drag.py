"""DragGAN geometry (Pan et al., SIGGRAPH 2023): start latent, radii, resized-feature windows, point tracking,
stopping.

Semantics follow the official renderer after its 2023-07-18 fix (XingangPan/DragGAN `viz/renderer.py`,
`init_network` L208-263 and `_render_drag_impl` L272-373; see shared/reference/draggan.md §1.3-1.5).
Points are `[y, x]` = (row, col) pixels of the generated image, as the renderer stores them (drag_widget L40).

Two formulations read the same numbers off the 128x128 block's features `[B, C, s, s]`:
- *full* (the renderer's): resize the whole map bilinearly (align_corners=False) to the image size h, then
  slice and sample it (`resize_features`, `track_points_full`);
- *windowed* (ours): bilinear resizing is local (each output pixel mixes at most 2x2 source cells), so a
  window of the resized map is computed from a few source cells around it (`resized_windows`,
  `track_points`). Same values to float rounding, none of the h x h map.

Batched drags: `handle_points`/`target_points` `[B, N, 2]`, padded to the longest item, with `point_valid`
`[B, N]` (False = padding). Padded entries are never read for a result.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

FEATURE_RESOLUTION = 128  # renderer feature_idx=5 = output of the 6th block, b128 (renderer L272-294)
NUM_EDITED_WS = 6         # only ws[:, :6] are optimised, the rest stay at w0 (renderer L297-300)
TRUNCATION_PSI = 0.7      # init_network default trunc_psi (L208-263)
R1, R2 = 3, 12            # motion-supervision disc and tracking-window radii at 512 px (renderer L272-294)
RADIUS_REFERENCE_SIZE = 512  # radii scale as round(r / 512 * h) (renderer L316-341)
TRACKING_METRICS = ("l2", "l1")  # l2: the code (torch.linalg.norm, L329-341); l1: the paper's ||.||_1
STOP_RULES = ("code", "paper")


def seed_start_ws(generator, seed: int, truncation_psi: float = TRUNCATION_PSI) -> torch.Tensor:
    """The renderer's start latent: z = numpy RandomState(seed).randn(1, z_dim), ws = mapping(z, psi) as W+.

    Returns `[1, num_ws, w_dim]` on the generator's device. numpy's float64 draw is cast to float32 as the
    renderer does (`torch.from_numpy(...).float()`, L245-249).
    """
    z = np.random.RandomState(seed).randn(1, generator.z_dim)
    device = next(generator.parameters()).device
    z = torch.from_numpy(z).to(device).float()
    with torch.no_grad():
        return generator.mapping(z, truncation_psi=truncation_psi)


def compose_ws(edited_ws: torch.Tensor, start_ws: torch.Tensor) -> torch.Tensor:
    """W+ of a step: the optimised first vectors `[B, k, w_dim]` then start_ws[:, k:] `[B, num_ws, w_dim]`."""
    assert edited_ws.ndim == 3 and start_ws.ndim == 3 and edited_ws.shape[0] == start_ws.shape[0]
    return torch.cat([edited_ws, start_ws[:, edited_ws.shape[1]:].detach()], dim=1)


def scaled_radius(radius: float, image_size: int) -> int:
    """A radius given at 512 px, in pixels at `image_size`; Python's round (half to even) as the renderer."""
    return round(radius / RADIUS_REFERENCE_SIZE * image_size)


def drag_features(generator, ws: torch.Tensor, feature_resolution: int = FEATURE_RESOLUTION,
                  full_synthesis: bool = False) -> torch.Tensor:
    """The feature block's output `[B, C, s, s]` for ws `[B, num_ws, w_dim]` (noise const, as the renderer).

    `full_synthesis=True` runs every block as the renderer does (`return_feature=True`, L311); the default
    stops after the feature block, which gives the same tensor and the same gradients to ws.
    """
    if full_synthesis:
        return generator.synthesis(ws, noise_mode="const", return_features=True)[1][feature_resolution]
    return generator.synthesis(ws, noise_mode="const", stop_after=feature_resolution)


def resize_features(features: torch.Tensor, image_size: int) -> torch.Tensor:
    """The renderer's full resize: `[B, C, s, s]` -> `[B, C, h, h]`, bilinear, align_corners=False (L319)."""
    return F.interpolate(features, [image_size, image_size], mode="bilinear", align_corners=False)


def _resize_taps(positions: torch.Tensor, source_size: int, image_size: int):
    """Source cells and weights of bilinear resizing (align_corners=False) at integer output `positions`.

    Same formula as PyTorch's kernel: src = max((i + 0.5) * s / h - 0.5, 0), taps floor(src) and the next
    (clamped to s - 1), weights 1 - frac and frac. Positions outside [0, h) get zero weights, which is
    grid_sample's zero padding there. Returns (low, high) long and (weight_low, weight_high, inside).
    """
    inside = (positions >= 0) & (positions < image_size)
    clamped = positions.clamp(0, image_size - 1).to(torch.float32)
    source = ((clamped + 0.5) * (source_size / image_size) - 0.5).clamp(min=0)
    low = source.floor().long()
    high = (low + 1).clamp(max=source_size - 1)
    frac = source - low
    return low, high, (1 - frac) * inside, frac * inside, inside


def _interpolation_matrix(positions: torch.Tensor, source_size: int, image_size: int, span: int):
    """`[..., K, span]` weights from a block of `span` source cells to the K output `positions` `[..., K]`,
    the block's first cell `[...]`, and which positions are inside the image `[..., K]`."""
    low, high, weight_low, weight_high, inside = _resize_taps(positions, source_size, image_size)
    # positions are increasing, so low[..., 0] is the block's first needed cell; shift it left at the end
    start = low[..., 0].clamp(max=source_size - span)
    matrix = positions.new_zeros(*positions.shape, span, dtype=torch.float32)
    matrix.scatter_add_(-1, (low - start[..., None]).unsqueeze(-1), weight_low.unsqueeze(-1))
    matrix.scatter_add_(-1, (high - start[..., None]).unsqueeze(-1), weight_high.unsqueeze(-1))
    return matrix, start, inside


def resized_windows(
    features: torch.Tensor,  # [B, C, s, s] feature block output
    centers: torch.Tensor,   # [B, N, 2] long, [y, x] pixels at image_size
    half_size: int,          # window of (2 * half_size + 1)^2 pixels around each center
    image_size: int,         # h: the size the renderer resizes the features to
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of the resized map `resize_features(features, h)` around each center, without resizing the map.

    Returns `[B, N, C, K, K]` (K = 2 * half_size + 1; zero outside the image) and `inside` `[B, N, K, K]`.
    Each window reads a block of about K * s / h + 2 source cells and applies the two 1-D interpolations
    as small matrices; gradients flow to `features`.
    """
    batch, channels, source_size, _ = features.shape
    assert centers.shape[0] == batch and centers.shape[-1] == 2, f"centers {tuple(centers.shape)}"
    offsets = torch.arange(-half_size, half_size + 1, device=centers.device)
    rows = centers[..., 0:1].long() + offsets  # [B, N, K]
    cols = centers[..., 1:2].long() + offsets
    span = min(source_size, math.ceil(2 * half_size * source_size / image_size) + 2)
    row_matrix, row_start, row_inside = _interpolation_matrix(rows, source_size, image_size, span)
    col_matrix, col_start, col_inside = _interpolation_matrix(cols, source_size, image_size, span)
    cells = torch.arange(span, device=centers.device)
    block_rows = (row_start[..., None] + cells)[..., :, None]  # [B, N, span, 1]
    block_cols = (col_start[..., None] + cells)[..., None, :]  # [B, N, 1, span]
    item = torch.arange(batch, device=centers.device)[:, None, None, None]
    block = features[item, :, block_rows, block_cols]  # [B, N, span, span, C]
    windows = torch.einsum("bnik,bnklc,bnjl->bncij", row_matrix, block, col_matrix)
    inside = row_inside[..., :, None] & col_inside[..., None, :]
    return windows, inside


def reference_features(features0: torch.Tensor, handle_points: torch.Tensor, image_size: int) -> torch.Tensor:
    """F0 at each initial handle `[B, N, C]`: the resized start features at round(p) (renderer L320-326)."""
    windows, _ = resized_windows(features0.detach(), handle_points.round().long(), 0, image_size)
    return windows[..., 0, 0]


def _feature_distance(candidates: torch.Tensor, reference: torch.Tensor, metric: str, channel_dim: int):
    assert metric in TRACKING_METRICS, f"tracking metric must be one of {TRACKING_METRICS}, got {metric!r}"
    difference = candidates - reference
    if metric == "l2":
        return torch.linalg.norm(difference, dim=channel_dim)
    return difference.abs().sum(dim=channel_dim)


@torch.no_grad()
def track_points(
    features: torch.Tensor,       # [B, C, s, s] current feature block output
    reference: torch.Tensor,      # [B, N, C] F0 at the initial handles
    handle_points: torch.Tensor,  # [B, N, 2] long, current handles
    point_valid: torch.Tensor,    # [B, N] bool
    image_size: int,
    search_radius: int,           # r2 in pixels: scaled_radius(R2, h)
    metric: str = "l2",
) -> torch.Tensor:
    """Windowed point tracking: each handle moves to the pixel of the resized map, within the square of
    half-size `search_radius` around it (clipped to the image), whose feature is nearest to its reference.
    Ties go to the first pixel in row-major order, as torch.min in the renderer. Returns `[B, N, 2]` long."""
    windows, inside = resized_windows(features, handle_points, search_radius, image_size)
    distance = _feature_distance(windows, reference[..., None, None], metric, channel_dim=2)  # [B, N, K, K]
    distance = distance.masked_fill(~inside, math.inf).flatten(2)
    best = distance.argmin(dim=-1)
    size = 2 * search_radius + 1
    moved = handle_points.long() + torch.stack([best // size, best % size], dim=-1) - search_radius
    return torch.where(point_valid[..., None], moved, handle_points.long())


@torch.no_grad()
def track_points_full(resized: torch.Tensor, reference: torch.Tensor, handle_points: torch.Tensor,
                      point_valid: torch.Tensor, search_radius: int, metric: str = "l2") -> torch.Tensor:
    """The renderer's tracking on the full resized map `[B, C, h, h]`, point by point (L329-341)."""
    height, width = resized.shape[-2:]
    tracked = handle_points.long().clone()
    for item, point in zip(*torch.nonzero(point_valid, as_tuple=True), strict=True):
        y, x = tracked[item, point].tolist()
        up, down = max(y - search_radius, 0), min(y + search_radius + 1, height)
        left, right = max(x - search_radius, 0), min(x + search_radius + 1, width)
        patch = resized[item, :, up:down, left:right]  # [C, k_h, k_w]
        distance = _feature_distance(patch, reference[item, point][:, None, None], metric, channel_dim=0)
        best = int(distance.flatten().argmin())
        tracked[item, point, 0] = best // (right - left) + up
        tracked[item, point, 1] = best % (right - left) + left
    return tracked


def drag_directions(handle_points: torch.Tensor, target_points: torch.Tensor):
    """Unit directions `[B, N, 2]` ([dy, dx]) and distances `[B, N]` from handles to targets, in float32 with
    the renderer's 1e-7 in the normaliser (L346-360)."""
    offset = target_points.to(torch.float32) - handle_points.to(torch.float32)
    distance = torch.linalg.norm(offset, dim=-1)
    return offset / (distance[..., None] + 1e-7), distance


def stop_distance(image_size: int, num_points: torch.Tensor, rule: str = "code") -> torch.Tensor:
    """Distance in px under which a handle counts as arrived, per item `[B]` from its point count `[B]`.

    code: max(2 / 512 * h, 2) for any count (renderer L346-360, used by visualizer_drag.py L172-173);
    paper: 1 px for <= 5 handles, else 2 px.
    """
    assert rule in STOP_RULES, f"stop rule must be one of {STOP_RULES}, got {rule!r}"
    if rule == "code":
        return torch.full(num_points.shape, max(2 / RADIUS_REFERENCE_SIZE * image_size, 2.0))
    return torch.where(num_points <= 5, 1.0, 2.0)


def drag_finished(handle_points: torch.Tensor, target_points: torch.Tensor, point_valid: torch.Tensor,
                  image_size: int, rule: str = "code") -> torch.Tensor:
    """`[B]` bool: every valid handle of the item is within its stop distance of its target."""
    _, distance = drag_directions(handle_points, target_points)
    threshold = stop_distance(image_size, point_valid.sum(dim=-1), rule).to(distance.device)
    return ((distance <= threshold[:, None]) | ~point_valid).all(dim=-1)
