"""Image metrics for evaluation (pure PyTorch, no Lightning): per-image PSNR / SSIM / L1 / RMSE, LPIPS,
FID and KID, accumulated in fixed memory overall and per hole-ratio bucket (`MetricSuite`).

Images are `[B, 3, H, W]` in [0, 1] (data_range 1); convert the data contract's [-1, 1] with
`facelab.ops.color.to_unit_range`. Pretrained networks load from the torch cache or explicit paths
(`facelab/io/weights.py`).
"""

from facelab.io.weights import MissingWeightsError, locate_weights, torch_checkpoint_dir
from facelab.metrics.distribution import FeatureMoments, KernelSample, frechet_distance, polynomial_mmd2
from facelab.metrics.image_quality import (
    PSNR_CAP_DB,
    edgeconnect_mae,
    l1,
    psnr,
    quantize_8bit,
    rmse,
    ssim,
)
from facelab.metrics.reconstruction import RECONSTRUCTION_METRICS, reconstruction_metrics
from facelab.metrics.report import flatten_for_logging, markdown_table, write_report
from facelab.metrics.suite import (
    DISTRIBUTION_METRICS,
    PAPER_METRICS,
    PER_IMAGE_METRICS,
    WEIGHT_FREE_METRICS,
    MetricSettings,
    MetricSuite,
)
from facelab.ops.color import rgb_to_gray, to_unit_range

__all__ = [
    "DISTRIBUTION_METRICS",
    "PAPER_METRICS",
    "PER_IMAGE_METRICS",
    "PSNR_CAP_DB",
    "RECONSTRUCTION_METRICS",
    "WEIGHT_FREE_METRICS",
    "FeatureMoments",
    "KernelSample",
    "MetricSettings",
    "MetricSuite",
    "MissingWeightsError",
    "edgeconnect_mae",
    "flatten_for_logging",
    "frechet_distance",
    "l1",
    "locate_weights",
    "markdown_table",
    "polynomial_mmd2",
    "psnr",
    "quantize_8bit",
    "reconstruction_metrics",
    "rgb_to_gray",
    "rmse",
    "ssim",
    "to_unit_range",
    "torch_checkpoint_dir",
    "write_report",
]
