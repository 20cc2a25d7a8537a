"""Segmentation scores from a confusion matrix: per-class IoU and mIoU (mean over classes that occur)."""

from __future__ import annotations

import torch


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts [n_classes, n_classes] (row: true class, column: predicted) of label maps of equal shape."""
    assert predicted.shape == target.shape, f"shapes {tuple(predicted.shape)}, {tuple(target.shape)}"
    valid = (target >= 0) & (target < n_classes)
    index = target[valid] * n_classes + predicted[valid]
    return torch.bincount(index.flatten(), minlength=n_classes**2).reshape(n_classes, n_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN) per class [n_classes]; NaN where a class is neither present nor predicted."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp_min(1), torch.full_like(union, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the target or the prediction (NaN classes left out)."""
    return float(iou_per_class(confusion).nanmean())
