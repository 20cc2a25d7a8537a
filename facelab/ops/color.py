"""Colour conversions shared by guides, losses and metrics."""

from __future__ import annotations

import torch

GRAY_WEIGHTS = (
    0.2125,
    0.7154,
    0.0721,
)  # skimage.color.rgb2gray (Rec. 709), as EdgeConnect's Canny and metrics


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """The data contract's [-1, 1] to [0, 1], clamped (generators may overshoot)."""
    return images.add(1).mul(0.5).clamp(0, 1)


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, 1, H, W]
    """Luminance with skimage's rgb2gray weights."""
    weights = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)
