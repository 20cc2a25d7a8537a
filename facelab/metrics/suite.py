"""Streaming accumulators for a set of image metrics, overall and per hole-ratio bucket.

`MetricSuite.update(prediction, target, mask, keys)` takes a batch of `[B, 3, H, W]` images in [0, 1] and
adds it to fixed-size states; `sync()` sums the states of all processes (torch.distributed); `compute()`
returns one row per group ("overall" and each selected bucket). Memory does not grow with the number of
images: per-image metrics keep sums and sums of squares (mean and population std per group), FID keeps
feature moments (`distribution.FeatureMoments`) and KID a bounded sample (`distribution.KernelSample`).

Metric names:
  psnr, ssim, l1, rmse, mae_edgeconnect   per image (`image_quality`), on luminance if `grayscale`
  lpips_alex, lpips_vgg, vgg              per image (`perceptual`; vgg = LPIPS's uncalibrated VGG distance)
  fid, kid                                per group of images (`distribution`; KID overall only)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from facelab.metrics import image_quality as iq
from facelab.metrics.distribution import FeatureMoments, KernelSample, frechet_distance
from facelab.ops.color import rgb_to_gray
from facelab.ops.masks import BUCKET_NAMES, HOLE_RATIO_BUCKETS, bucket_from_name, bucket_indices, hole_ratio

PER_IMAGE_METRICS = ("psnr", "ssim", "l1", "rmse", "mae_edgeconnect", "lpips_alex", "lpips_vgg", "vgg")
DISTRIBUTION_METRICS = ("fid", "kid")
WEIGHT_FREE_METRICS = ("psnr", "ssim", "l1")
PAPER_METRICS = ("psnr", "ssim", "l1", "lpips_vgg", "fid")  # LaMa's SSIM/LPIPS/FID plus PSNR and L1
_LUMINANCE_METRICS = ("psnr", "ssim", "l1", "rmse", "mae_edgeconnect")


@dataclass
class MetricSettings:
    """How the metrics are computed; the defaults are the papers' settings (see README, Metrics)."""

    psnr_cap_db: float | None = iq.PSNR_CAP_DB  # a perfect image scores this instead of inf
    ssim_window: str = "gaussian"  # 11x11 Gaussian, sigma 1.5 (Wang et al.; LaMa)
    ssim_sigma: float = 1.5
    ssim_win_size: int = 11  # used by the uniform window only
    ssim_sample_covariance: bool = False
    grayscale: bool = False  # PSNR/SSIM/L1/RMSE/MAE on luminance (EdgeConnect)
    quantize_8bit: bool = True  # score what an 8-bit PNG would hold, as the papers' scripts
    fid_preprocessing: str = "pytorch_fid"  # see inception.py; LaMa and EdgeConnect used pytorch-fid
    fid_per_bucket: bool = True  # a FID per bucket (LaMa) costs 2 D^2 float64 per bucket
    kid_capacity: int = 5000  # KID sample size bound (memory 2 x capacity x D floats)
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> MetricSettings:
        """`default` (LaMa-compatible) or `edgeconnect` (its scripts/metrics.py), with overrides."""
        presets = {
            "default": {},
            "edgeconnect": {
                "grayscale": True,
                "ssim_window": "uniform",
                "ssim_win_size": 51,
                "ssim_sample_covariance": True,
            },
        }
        if name not in presets:
            raise ValueError(f"Metric preset {name!r}: choose one of {tuple(presets)}.")
        return cls(**{**presets[name], **overrides})


def select_buckets(buckets) -> tuple[int, ...]:
    """Bucket indices from "all" / True, "none" / False / None, or a list of indices or labels."""
    if buckets in (None, False, "none", "off"):
        return ()
    if buckets in (True, "all"):
        return tuple(range(len(HOLE_RATIO_BUCKETS)))
    if isinstance(buckets, str | int):
        buckets = [buckets]
    return tuple(sorted({bucket_from_name(b) for b in buckets}))


class MetricSuite(nn.Module):
    """Accumulates `metrics` over batches, overall and per selected hole-ratio bucket."""

    def __init__(
        self,
        metrics=WEIGHT_FREE_METRICS,
        buckets="all",
        settings: MetricSettings | dict | None = None,
        feature_extractor: nn.Module | None = None,
        weights: dict | None = None,
    ):
        super().__init__()
        unknown = set(metrics) - set(PER_IMAGE_METRICS) - set(DISTRIBUTION_METRICS)
        if unknown or not metrics:
            raise ValueError(
                f"Unknown metrics {sorted(unknown)}; choose from {PER_IMAGE_METRICS + DISTRIBUTION_METRICS}."
            )
        if not isinstance(settings, MetricSettings):
            settings = MetricSettings(**(settings or {}))
        self.settings = settings
        self.metrics = tuple(dict.fromkeys(metrics))
        self.per_image = tuple(m for m in self.metrics if m in PER_IMAGE_METRICS)
        self.buckets = select_buckets(buckets)
        self.group_names = ("overall", *(BUCKET_NAMES[b] for b in self.buckets))
        group_of_bucket = torch.full((len(HOLE_RATIO_BUCKETS),), -1, dtype=torch.int64)
        for group, bucket in enumerate(self.buckets, start=1):
            group_of_bucket[bucket] = group
        self.register_buffer("group_of_bucket", group_of_bucket, persistent=False)
        self.networks = nn.ModuleDict(self._build_networks(weights or {}))
        self.feature_extractor = None
        groups = len(self.group_names)
        self.register_buffer("sums", torch.zeros(groups, len(self.per_image), dtype=torch.float64))
        self.register_buffer("square_sums", torch.zeros(groups, len(self.per_image), dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(groups, dtype=torch.int64))
        if {"fid", "kid"} & set(self.metrics):
            self.feature_extractor = (
                feature_extractor if feature_extractor is not None else self._inception(weights or {})
            )
            self.feature_extractor.eval()  # a metric network never trains (dropout, batch-norm statistics)
            dim = feature_dimension(self.feature_extractor)
            fid_groups = groups if self.settings.fid_per_bucket else 1
            if "fid" in self.metrics:
                self.real_moments = FeatureMoments(fid_groups, dim)
                self.fake_moments = FeatureMoments(fid_groups, dim)
            if "kid" in self.metrics:
                self.kernel_sample = KernelSample(self.settings.kid_capacity, dim)
        self._next_key = 0

    def _build_networks(self, weights: dict) -> dict[str, nn.Module]:
        from facelab.metrics.perceptual import PerceptualDistance

        networks = {}
        if "lpips_alex" in self.metrics:
            networks["lpips_alex"] = PerceptualDistance("alex", True, weights.get("alexnet"))
        if "lpips_vgg" in self.metrics:
            networks["lpips_vgg"] = PerceptualDistance("vgg", True, weights.get("vgg16"))
        if "vgg" in self.metrics:
            networks["vgg"] = PerceptualDistance("vgg", False, weights.get("vgg16"))
        return networks

    def _inception(self, weights: dict) -> nn.Module:
        from facelab.metrics.inception import InceptionFeatures

        return InceptionFeatures(weights.get("inception"), self.settings.fid_preprocessing)

    # ----------------------------------------------------------------- accumulation
    def reset(self) -> None:
        """Zero every state (before an evaluation)."""
        for buffer in (self.sums, self.square_sums, self.counts):
            buffer.zero_()
        for name in ("real_moments", "fake_moments", "kernel_sample"):
            if hasattr(self, name):
                getattr(self, name).reset()
        self._next_key = 0

    def groups_of(self, mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        """`[B]` bucket group of each image (-1: outside the selected buckets); needs masks if bucketed."""
        if not self.buckets:
            return torch.full((batch,), -1, dtype=torch.int64, device=self.counts.device)
        if mask is None:
            raise ValueError(
                "Per-bucket metrics need the batch's hole mask; pass `mask`, or set buckets to "
                "'none' for a task without masks."
            )
        bucket = bucket_indices(hole_ratio(mask.reshape(batch, -1, *mask.shape[-2:])[:, 0]))
        return torch.where(bucket >= 0, self.group_of_bucket.to(bucket.device)[bucket.clamp_min(0)], -1)

    def per_image_values(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`[B, M]` float64, one column per per-image metric."""
        s = self.settings
        luminance_pair = (prediction, target)
        if s.grayscale:
            luminance_pair = (rgb_to_gray(prediction), rgb_to_gray(target))
        columns = []
        for name in self.per_image:
            pair = luminance_pair if name in _LUMINANCE_METRICS else (prediction, target)
            if name == "psnr":
                value = iq.psnr(*pair, cap_db=s.psnr_cap_db)
            elif name == "ssim":
                value = iq.ssim(
                    *pair,
                    window=s.ssim_window,
                    sigma=s.ssim_sigma,
                    win_size=s.ssim_win_size,
                    sample_covariance=s.ssim_sample_covariance,
                )
            elif name in ("l1", "rmse", "mae_edgeconnect"):
                value = {"l1": iq.l1, "rmse": iq.rmse, "mae_edgeconnect": iq.edgeconnect_mae}[name](*pair)
            else:
                value = self.networks[name](*pair)
            columns.append(value.double())
        return torch.stack(columns, dim=1)

    @torch.no_grad()
    def update(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> None:
        """Add a batch: `prediction`, `target` `[B, 3, H, W]` in [0, 1]; `mask` `[B, 1, H, W]` (1 = hole);
        `keys` `[B]` int64 ids of the images in the evaluation order (default: a running count)."""
        batch = prediction.shape[0]
        if batch == 0:
            return
        if keys is None:
            keys = torch.arange(self._next_key, self._next_key + batch)
            self._next_key += batch
        if self.settings.quantize_8bit:
            prediction, target = iq.quantize_8bit(prediction), iq.quantize_8bit(target)
        groups = self.groups_of(mask, batch).to(self.counts.device)
        if self.per_image:
            values = self.per_image_values(prediction, target).to(self.sums.device)
            self._add(0, values)
            for group in groups.unique().tolist():
                if group >= 0:
                    self._add(group, values[groups == group])
        else:
            self.counts[0] += batch
            for group in groups.unique().tolist():
                if group >= 0:
                    self.counts[group] += int((groups == group).sum())
        if self.feature_extractor is not None:
            real, fake = self.feature_extractor(target), self.feature_extractor(prediction)  # [B, D] each
            if hasattr(self, "real_moments"):
                overall = torch.zeros_like(groups)
                for moments, features in ((self.real_moments, real), (self.fake_moments, fake)):
                    moments.update(features, overall)
                    if self.settings.fid_per_bucket:
                        moments.update(features, groups)
            if hasattr(self, "kernel_sample"):
                self.kernel_sample.update(real, fake, keys)

    def _add(self, group: int, values: torch.Tensor) -> None:
        self.sums[group] += values.sum(dim=0)
        self.square_sums[group] += values.pow(2).sum(dim=0)
        self.counts[group] += values.shape[0]

    # ----------------------------------------------------------------- processes
    def sync(self) -> None:
        """Sum the states of every process (call on all ranks; a no-op without torch.distributed)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        summed = [self.sums, self.square_sums, self.counts]
        for name in ("real_moments", "fake_moments"):
            if hasattr(self, name):
                moments = getattr(self, name)
                summed += [moments.total, moments.outer, moments.count]
        for tensor in summed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if hasattr(self, "kernel_sample"):
            sample = self.kernel_sample
            gathered = {}
            for name in ("priority", "real", "fake"):
                parts = [torch.empty_like(getattr(sample, name)) for _ in range(dist.get_world_size())]
                dist.all_gather(parts, getattr(sample, name))
                gathered[name] = torch.cat(parts)
            sample.reset()
            sample.insert(gathered["priority"], gathered["real"], gathered["fake"])

    # ----------------------------------------------------------------- results
    def compute(self) -> list[dict]:
        """One row per group: name, hole-ratio range, count, then `<metric>` (mean) and `<metric>_std`."""
        rows = []
        for group, name in enumerate(self.group_names):
            low, high = (None, None) if group == 0 else HOLE_RATIO_BUCKETS[self.buckets[group - 1]]
            count = int(self.counts[group])
            row = {"group": name, "hole_ratio_low": low, "hole_ratio_high": high, "count": count}
            for column, metric in enumerate(self.per_image):
                row[metric], row[f"{metric}_std"] = _mean_std(
                    float(self.sums[group, column]), float(self.square_sums[group, column]), count
                )
            if "fid" in self.metrics:
                row["fid"] = self._fid(group) if group == 0 or self.settings.fid_per_bucket else math.nan
            if "kid" in self.metrics:  # one sample for all images: KID is overall only
                row["kid"], row["kid_std"] = (
                    (math.nan, math.nan)
                    if group
                    else self.kernel_sample.kid(self.settings.kid_subsets, self.settings.kid_subset_size)
                )
            rows.append(row)
        return rows

    def _fid(self, group: int) -> float:
        if min(int(self.real_moments.count[group]), int(self.fake_moments.count[group])) < 2:
            return math.nan  # a covariance needs two images
        return frechet_distance(
            *self.real_moments.mean_covariance(group), *self.fake_moments.mean_covariance(group)
        )

    def describe(self) -> dict:
        """The configuration, for the report."""
        return {
            "metrics": list(self.metrics),
            "bucket_names": [BUCKET_NAMES[b] for b in self.buckets],
            "settings": dataclasses.asdict(self.settings),
            "feature_extractor": None
            if self.feature_extractor is None
            else type(self.feature_extractor).__name__,
        }


def _mean_std(total: float, square_total: float, count: int) -> tuple[float, float]:
    if count == 0:
        return math.nan, math.nan
    mean = total / count
    if math.isinf(mean):
        return mean, math.nan
    return mean, math.sqrt(max(square_total / count - mean * mean, 0.0))


def feature_dimension(extractor: nn.Module) -> int:
    """`num_features` if the extractor declares it, else the width of its output on a dummy batch."""
    declared = getattr(extractor, "num_features", None)
    if declared:
        return int(declared)
    parameter = next(extractor.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    with torch.no_grad():
        return int(extractor(torch.zeros(2, 3, 64, 64, device=device)).shape[1])
