"""Figures that say whether an edit did what it was asked (`make demo`): the overlap of a region found by a
parser with the region asked for, the perceptual and pixel distance to the original inside a region that
should not change, and the distances of dragged points to their targets.

Each function returns None, not a number, when its figure is undefined (an empty mask, an empty union):
a parser that finds nothing must show up as a missing figure, never as a perfect or a zero score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from facelab.losses.barbershop import lpips_features, masked_lpips
from facelab.metrics.perceptual import PerceptualDistance

LPIPS_DEPTHS = (1, 2, 3, 4, 5)  # every VGG depth of LPIPS v0.1 (Barbershop's blend uses 1-3)


def mask_iou(first: torch.Tensor, second: torch.Tensor) -> float | None:
    """Intersection over union of two boolean masks of one shape; None when both are empty."""
    if first.shape != second.shape:
        raise ValueError(f"mask_iou of masks of shapes {tuple(first.shape)} and {tuple(second.shape)}.")
    first, second = first.bool(), second.bool()
    union = int((first | second).sum())
    return None if union == 0 else int((first & second).sum()) / union


def masked_psnr(
    prediction: torch.Tensor,  # [3, H, W] in [-1, 1]
    target: torch.Tensor,  # [3, H, W] in [-1, 1]
    mask: torch.Tensor,  # [H, W], true = compared
) -> float | None:
    """PSNR in dB over the masked pixels, on the [0, 1] scale (peak 1); None for an empty mask, inf for equal
    pixels."""
    if prediction.shape != target.shape or prediction.shape[-2:] != mask.shape:
        raise ValueError(
            f"masked_psnr: images {tuple(prediction.shape)}, {tuple(target.shape)}; mask {tuple(mask.shape)}."
        )
    mask = mask.bool()
    if not mask.any():
        return None
    difference = ((prediction.double() - target.double()) / 2)[:, mask]  # [3, pixels] on the [0, 1] scale
    mse = float(difference.pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@torch.no_grad()
def masked_lpips_distance(
    net: PerceptualDistance,
    prediction: torch.Tensor,  # [3, H, W] in [-1, 1]
    target: torch.Tensor,  # [3, H, W] in [-1, 1]
    mask: torch.Tensor,  # [H, W], true = compared
    depths: Sequence[int] = LPIPS_DEPTHS,
) -> float | None:
    """LPIPS restricted to a region: Barbershop's masked LPIPS formula (the lin-weighted distance map averaged
    over the mask resized to each depth, summed over depths), here over all five depths. With an all-true mask
    it is LPIPS itself. None for an empty mask."""
    if not mask.bool().any():
        return None
    features = lpips_features(net, target[None])
    region = mask.float()[None, None]
    return float(masked_lpips(net, prediction[None], features, region, depths)[0])


def point_distances(points: np.ndarray | Sequence, targets: np.ndarray | Sequence) -> list[float]:
    """Euclidean distance of each point `[N, 2]` to its target `[N, 2]` (same coordinate order), pixels."""
    points, targets = np.asarray(points, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if points.shape != targets.shape or points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(
            f"point_distances of {points.shape} points and {targets.shape} targets: need [N, 2]."
        )
    return np.sqrt(((points - targets) ** 2).sum(axis=1)).tolist()
