"""Throughput and memory of the metric accumulators (facelab.metrics.MetricSuite, what callbacks/metrics.py
runs) against calling torchmetrics' metric objects directly on the same batches.

Each variant runs in its own process (so peak RSS is its own) over `--images` random 256 px image pairs
with masks (cycled from a pre-built pool, so making data is not timed): images/s of `update` + `compute`,
the bytes held in metric states after the last batch, and the process's peak RSS (the same data pool in
every variant). Variants alternate over `--repeats` rounds and medians are printed, as the machine may be
shared. FID / KID use a tiny random feature extractor and LPIPS
(`--lpips`) a random AlexNet trunk, as no pretrained weights can be downloaded here: the numbers measure the
accumulators, not Inception. Usage: `python benchmarks/bench_metrics.py [--images 1000] [--lpips]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("facelab_buckets", "facelab_overall", "torchmetrics")


class TinyFeatures(nn.Module):
    """A random 64-d extractor standing in for Inception: `[N, 3, H, W]` in [0, 1] -> `[N, 64]`."""

    num_features = 64

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 32, 4, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv(images))
        return torch.cat([hidden.mean(dim=(2, 3)), hidden.amax(dim=(2, 3))], dim=1)

    def train(self, mode: bool = True):
        return super().train(False)  # torchmetrics calls .train() on its extractor


def batch_pool(size: int, batch: int, pool: int = 8) -> list[tuple[torch.Tensor, ...]]:
    """`pool` seeded random (prediction, target, mask) batches in [0, 1], hole ratios spread over the buckets.
    The timed loop cycles through them, so generating data is not timed."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(pool):
        target = torch.rand(batch, 3, size, size, generator=generator)
        prediction = (target + 0.1 * torch.randn(batch, 3, size, size, generator=generator)).clamp(0, 1)
        rows = (torch.rand(batch, generator=generator) * 0.6 * size).long() + 1
        mask = (torch.arange(size).view(1, 1, size, 1) < rows.view(batch, 1, 1, 1)).float()
        batches.append((prediction, target, mask.expand(batch, 1, size, size)))
    return batches


def state_bytes(tensors) -> int:
    total = 0
    for value in tensors:
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, list | tuple):
            total += state_bytes(value)
    return total


def seed_alexnet(torch_home: Path) -> None:
    """A random AlexNet under torchvision's cache name: torchmetrics' LPIPS loads the full model from it."""
    from torchvision.models import alexnet

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(alexnet(weights=None).state_dict(), folder / "alexnet-owt-7be5be79.pth")


def run_variant(variant: str, images: int, size: int, batch: int, lpips: bool) -> dict:
    names = ["psnr", "ssim", "l1", "fid", "kid"] + (["lpips_alex"] if lpips else [])
    subset = min(100, images - 1)  # KID subset size; torchmetrics needs fewer than the number of images
    if variant.startswith("facelab"):
        from facelab.metrics import MetricSuite

        suite = MetricSuite(
            names,
            buckets="all" if variant == "facelab_buckets" else "none",
            feature_extractor=TinyFeatures(),
            settings={
                "quantize_8bit": False,
                "kid_subsets": 10,
                "kid_subset_size": subset,
                "kid_capacity": 1000,
            },
        )
        update, finish = suite.update, suite.compute

        def states():
            parts = [suite.real_moments, suite.fake_moments, suite.kernel_sample]
            return [suite.sums, suite.square_sums, suite.counts] + [t for p in parts for t in p.buffers()]
    else:
        # FID / KID from their modules: torchmetrics.image exports them only with torch-fidelity installed.
        from torchmetrics.image import (
            LearnedPerceptualImagePatchSimilarity,
            PeakSignalNoiseRatio,
            StructuralSimilarityIndexMeasure,
        )
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
        from torchmetrics.regression import MeanAbsoluteError

        extractor = TinyFeatures()
        metrics = {
            "psnr": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
            "l1": MeanAbsoluteError(),
            "fid": FrechetInceptionDistance(feature=extractor, normalize=True),
            "kid": KernelInceptionDistance(feature=extractor, normalize=True, subsets=10, subset_size=subset),
        }
        if lpips:
            metrics["lpips_alex"] = LearnedPerceptualImagePatchSimilarity("alex", normalize=True)

        def update(prediction, target, mask):
            for name in ("psnr", "ssim", "l1") + (("lpips_alex",) if lpips else ()):
                metrics[name].update(prediction, target)
            for name in ("fid", "kid"):
                metrics[name].update(target, real=True)
                metrics[name].update(prediction, real=False)

        def finish():
            return {name: metric.compute() for name, metric in metrics.items()}

        def states():
            return [getattr(m, key) for m in metrics.values() for key in m._defaults]

    pool = batch_pool(size, batch)
    update(*pool[0])  # warm-up (first-call allocations), then start from empty states
    if variant.startswith("facelab"):
        suite.reset()
    else:
        for metric in metrics.values():
            metric.reset()
    started = time.perf_counter()
    for index in range(images // batch):
        update(*pool[index % len(pool)])
    finish()
    seconds = time.perf_counter() - started
    return {
        "variant": variant,
        "images_per_s": images / seconds,
        "seconds": seconds,
        "state_mib": state_bytes(states()) / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=25, help="a divisor of --images")
    parser.add_argument("--lpips", action="store_true", help="add LPIPS (alex, random trunk); slow on a CPU")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the variants; medians reported")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.images, args.size, args.batch, args.lpips)))
        return
    print(
        f"{args.images} images at {args.size} px, batch {args.batch}, threads {torch.get_num_threads()}; "
        "metrics psnr, ssim, l1, fid, kid"
        + (", lpips_alex" if args.lpips else "")
        + ". FID/KID: tiny random 64-d extractor; LPIPS: random AlexNet trunk (no pretrained weights here)."
    )
    with tempfile.TemporaryDirectory() as torch_home:
        environment = {**os.environ, "TORCH_HOME": torch_home, "PYTHONPATH": str(ROOT)}
        if args.lpips:
            seed_alexnet(Path(torch_home))  # one file serves both: facelab reads only its `features.*`
        runs = {variant: [] for variant in VARIANTS}
        for _ in range(args.repeats):  # round-robin, so load changes on a shared machine hit every variant
            for variant in VARIANTS:
                command = [
                    sys.executable,
                    __file__,
                    "--variant",
                    variant,
                    "--images",
                    str(args.images),
                    "--size",
                    str(args.size),
                    "--batch",
                    str(args.batch),
                ]
                command += ["--lpips"] if args.lpips else []
                finished = subprocess.run(command, env=environment, capture_output=True, text=True)
                if finished.returncode:
                    sys.exit(f"{variant} failed:\n{finished.stderr}")
                runs[variant].append(json.loads(finished.stdout.strip().splitlines()[-1]))
    keys = ("images_per_s", "state_mib", "peak_rss_mib")
    results = {v: {key: statistics.median(r[key] for r in rs) for key in keys} for v, rs in runs.items()}
    reference = results["torchmetrics"]
    print(
        f"{'variant':<18}{'images/s':>10}{'x torchm.':>11}{'state MiB':>11}{'peak RSS MiB':>14}"
        f"  (medians of {args.repeats})"
    )
    for variant, result in results.items():
        ratio = result["images_per_s"] / reference["images_per_s"]
        print(
            f"{variant:<18}{result['images_per_s']:>10.1f}{ratio:>11.2f}{result['state_mib']:>11.2f}"
            f"{result['peak_rss_mib']:>14.0f}"
        )
    print(
        "facelab_buckets also keeps per-bucket FID moments and per-bucket means (7 groups); torchmetrics "
        "is overall only. torchmetrics' KID and per-image PSNR keep every image's features / value."
    )


if __name__ == "__main__":
    main()
