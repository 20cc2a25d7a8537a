"""Per-image time of facelab.ops.hog.hog against skimage.feature.hog, 256 px RGB, default parameters.

Run: `python benchmarks/bench_hog.py [--threads 1] [--repeats N] [--profile]`. Both sides compute the same
descriptor (9 orientations, 8 px cells, 2x2 blocks, L2-Hys); skimage runs one image at a time, ours the
batch in one call, by both methods (`fast`, the default, and `reference`). Each speed-up is skimage's
time over ours, both measured in this run. Times are the best of `--repeats` runs after warm-up calls:
on a machine shared with other jobs the best run is the one least disturbed by them (the median is
printed too). `--profile` prints where each method spends its time (torch's profiler, batch 32 float32).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time

import numpy as np
import torch
from skimage import data, transform
from skimage.feature import hog as skimage_hog

from facelab.ops.hog import METHODS, hog
from facelab.ops.hog_native import kernel_off, load_kernel

SIZE = 256
PARAMS = {"orientations": 9, "pixels_per_cell": 8, "cells_per_block": 2, "block_norm": "L2-Hys"}


def make_images(batch: int) -> np.ndarray:
    """`[batch, H, W, 3]` float64 in [0, 1]: the astronaut at 256 px, shifted so each image differs."""
    base = transform.resize(data.astronaut() / 255.0, (SIZE, SIZE), anti_aliasing=True)
    return np.stack([np.roll(base, (7 * i, 13 * i), axis=(0, 1)) for i in range(batch)])


def seconds(run, repeats: int, warmup: int = 2, sync=lambda: None) -> tuple[float, float]:
    """Best and median wall time of `run()` after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def skimage_per_image(images: np.ndarray, repeats: int) -> tuple[float, float]:
    """skimage's time per image, looping over the batch as a data loader would."""
    skimage_params = {**PARAMS, "pixels_per_cell": (8, 8), "cells_per_block": (2, 2)}

    def run():
        for image in images:
            skimage_hog(image, feature_vector=False, channel_axis=-1, **skimage_params)

    best, median = seconds(run, repeats, warmup=1)
    return best / len(images), median / len(images)


def as_batch(images: np.ndarray, device: str, dtype: torch.dtype) -> torch.Tensor:
    """`[B, 3, H, W]` on the device (the transfer is not timed)."""
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device, dtype)


def torch_per_image(batch: torch.Tensor, method: str, repeats: int) -> tuple[float, float]:
    """Our time per image for the whole batch in one call. `fast-torch` is `fast` with the compiled kernel
    off (its vectorised torch path, what runs where no C compiler is found)."""
    sync = torch.cuda.synchronize if batch.device.type == "cuda" else (lambda: None)
    context = kernel_off() if method == "fast-torch" else contextlib.nullcontext()
    with context:
        run = functools.partial(hog, batch, **PARAMS, method=method.removesuffix("-torch"))
        best, median = seconds(run, repeats, sync=sync)
    return best / len(batch), median / len(batch)


def methods_for(batch: torch.Tensor) -> list[str]:
    """The compiled kernel serves float32 on the CPU: there both of `fast`'s paths are timed."""
    if batch.device.type == "cpu" and batch.dtype == torch.float32 and load_kernel() is not None:
        return ["fast", "fast-torch", "reference"]
    return list(METHODS)


def profile(images: np.ndarray, rows: int = 12) -> None:
    """The ops each method spends its time in (self CPU time, whole batch, a few calls)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch = as_batch(images, "cpu", torch.float32)
    for method in METHODS:
        hog(batch, **PARAMS, method=method)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                hog(batch, **PARAMS, method=method)
        print(f"\n== {method}, batch {len(batch)}, float32 (profiler overhead inflates small ops)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="also print each method's top ops")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, devices: {', '.join(devices)}")
    if "cuda" in devices:
        print(f"GPU: {torch.cuda.get_device_name()}")
    row = "{:>5} {:>6} {:>8} {:>10} {:>12} {:>15} {:>9} {:>13}"
    columns = ("batch", "device", "dtype", "method", "ours ms/img", "skimage ms/img", "speed-up", "(medians)")
    print(row.format(*columns))
    for batch_size in (1, 32):
        images = make_images(batch_size)
        reference, reference_median = skimage_per_image(images, args.repeats)
        for device in devices:
            for dtype in (torch.float32, torch.float64):
                batch = as_batch(images, device, dtype)
                for method in methods_for(batch):
                    ours, ours_median = torch_per_image(batch, method, args.repeats)
                    name = str(dtype).removeprefix("torch.")
                    print(
                        row.format(
                            batch_size, device, name, method, f"{ours * 1e3:.3f}", f"{reference * 1e3:.2f}",
                            f"{reference / ours:.1f}x", f"{reference_median / ours_median:.1f}x",
                        )
                    )
    if args.profile:
        profile(make_images(32))


if __name__ == "__main__":
    main()
