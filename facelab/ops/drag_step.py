"""One DragGAN step on a batch of independent drags: point tracking, then the losses (renderer L329-367).

The caller owns the latents and the optimiser; per step it runs

    features = drag_features(G, compose_ws(edited_ws, start_ws))   # [B, C, 128, 128]
    step = drag_step(features, start, handles, targets, valid, mask, h, settings)
    step.loss.sum().backward()   # per-item losses summed: each item's gradient is its own
    # update only items with ~step.finished (the renderer skips the update once stopped, L370-373)
    handles = step.handle_points

`formulation="windowed"` (default) reads windows of the resized features around the handles;
`formulation="full"` is the renderer's full resize (a reference, and the benchmark's baseline). Both give
the same losses, gradients and tracked points to float rounding (tests/test_drag_math.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from facelab.losses.drag import (
    LAMBDA_MASK,
    fixed_region_loss,
    fixed_region_loss_full,
    motion_supervision_loss,
    motion_supervision_loss_full,
)
from facelab.ops.drag import (
    R1,
    R2,
    drag_directions,
    drag_finished,
    reference_features,
    resize_features,
    scaled_radius,
    track_points,
    track_points_full,
)

FORMULATIONS = ("windowed", "full")


@dataclass(frozen=True)
class DragSettings:
    """Per-drag settings with the official defaults (renderer L272-294, drag_widget L24)."""

    r1: float = R1                 # motion disc radius at 512 px
    r2: float = R2                 # tracking window half-size at 512 px
    lambda_mask: float = LAMBDA_MASK
    tracking_metric: str = "l2"    # "l2" as the code, "l1" as the paper
    stop_rule: str = "code"        # "code": max(2, 2h/512) px; "paper": 1 px for <= 5 points else 2
    disc_grid: str = "linspace"    # "linspace" as the code (its off-centre disc), "arange" centred
    formulation: str = "windowed"  # "windowed" (ours) or "full" (the renderer's full resize)


@dataclass
class DragStart:
    """What the first forward pass fixes: F0 `[B, C, s, s]` and F0 at the initial handles `[B, N, C]`."""

    features0: torch.Tensor
    reference: torch.Tensor
    resized0: torch.Tensor | None = None  # R(F0) `[B, C, h, h]`, kept only by the full formulation


def drag_start(features0: torch.Tensor, handle_points: torch.Tensor, image_size: int,
               settings: DragSettings = DragSettings()) -> DragStart:
    """Start state from the first features `[B, C, s, s]` and the initial handles `[B, N, 2]`."""
    features0 = features0.detach()
    resized0 = resize_features(features0, image_size) if settings.formulation == "full" else None
    return DragStart(features0, reference_features(features0, handle_points, image_size), resized0)


@dataclass
class DragStep:
    handle_points: torch.Tensor  # [B, N, 2] long, tracked this step (the losses are taken around them)
    distance: torch.Tensor       # [B, N] handle-target distance after tracking
    finished: torch.Tensor       # [B] bool: stop rule met (the renderer then skips the update)
    loss: torch.Tensor           # [B] motion + mask
    motion_loss: torch.Tensor    # [B]
    mask_loss: torch.Tensor      # [B]


def drag_step(
    features: torch.Tensor,             # [B, C, s, s] this step's feature block output (with grad)
    start: DragStart,
    handle_points: torch.Tensor,        # [B, N, 2] long, handles after the previous step
    target_points: torch.Tensor,        # [B, N, 2]
    point_valid: torch.Tensor,          # [B, N] bool, False = padding
    editable_mask: torch.Tensor | None, # [B, 1, h, h], 1 = may change; None = no mask term
    image_size: int,
    settings: DragSettings = DragSettings(),
) -> DragStep:
    """Track the handles on this step's features, then compute each item's loss around the new handles."""
    assert settings.formulation in FORMULATIONS, f"formulation must be one of {FORMULATIONS}"
    disc_radius = scaled_radius(settings.r1, image_size)
    search_radius = scaled_radius(settings.r2, image_size)
    if settings.formulation == "full":
        resized = resize_features(features, image_size)
        tracked = track_points_full(resized.detach(), start.reference, handle_points, point_valid,
                                    search_radius, settings.tracking_metric)
        motion = motion_supervision_loss_full(resized, tracked, target_points, point_valid, disc_radius,
                                              settings.disc_grid)
    else:
        tracked = track_points(features.detach(), start.reference, handle_points, point_valid, image_size,
                               search_radius, settings.tracking_metric)
        motion = motion_supervision_loss(features, tracked, target_points, point_valid, image_size,
                                         disc_radius, settings.disc_grid)
    if editable_mask is None:
        mask = torch.zeros_like(motion)
    elif settings.formulation == "full":
        resized0 = start.resized0
        if resized0 is None:
            resized0 = resize_features(start.features0, image_size)
        mask = fixed_region_loss_full(resized, resized0, editable_mask, settings.lambda_mask)
    else:
        mask = fixed_region_loss(features, start.features0, editable_mask, settings.lambda_mask)
    _, distance = drag_directions(tracked, target_points)
    finished = drag_finished(tracked, target_points, point_valid, image_size, settings.stop_rule)
    return DragStep(tracked, distance, finished, motion + mask, motion, mask)
