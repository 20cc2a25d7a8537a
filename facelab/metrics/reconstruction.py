"""Reconstruction metrics for optimisation-as-fit tasks (Barbershop's table): the same accumulators with
no hole-ratio buckets, since these tasks have no hole masks.

Barbershop reports RMSE, PSNR, SSIM, "VGG", LPIPS and FID for reconstructions. The paper does not give the
LPIPS trunk or the VGG distance's definition; here LPIPS is the `lpips` package's default (alex) and VGG is
LPIPS's uncalibrated VGG16 distance (`lpips.LPIPS(net="vgg", lpips=False)`). Change `metrics` to match
another table.
"""

from __future__ import annotations

from torch import nn

from facelab.metrics.suite import MetricSettings, MetricSuite

RECONSTRUCTION_METRICS = ("rmse", "psnr", "ssim", "vgg", "lpips_alex", "fid")


def reconstruction_metrics(
    metrics=RECONSTRUCTION_METRICS,
    settings: MetricSettings | dict | None = None,
    feature_extractor: nn.Module | None = None,
    weights: dict | None = None,
) -> MetricSuite:
    """A `MetricSuite` over (reconstruction, original) pairs in [0, 1], overall only."""
    return MetricSuite(
        metrics, buckets="none", settings=settings, feature_extractor=feature_extractor, weights=weights
    )
