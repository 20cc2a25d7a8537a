"""Per-image time of facelab.ops.hog.hog against skimage.feature.hog, 256 px RGB, default parameters.

Run: `python benchmarks/bench_hog.py [--repeats N]`. Both sides compute the same descriptor
(9 orientations, 8 px cells, 2x2 blocks, L2-Hys); skimage runs one image at a time, ours the batch.
Times are medians over the repeats after warm-up calls; speed-up = skimage time / ours, same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from skimage import data, transform
from skimage.feature import hog as skimage_hog

from facelab.ops.hog import hog

SIZE = 256
PARAMS = {"orientations": 9, "pixels_per_cell": 8, "cells_per_block": 2, "block_norm": "L2-Hys"}


def make_images(batch: int) -> np.ndarray:
    """`[batch, H, W, 3]` float64 in [0, 1]: the astronaut at 256 px, shifted so each image differs."""
    base = transform.resize(data.astronaut() / 255.0, (SIZE, SIZE), anti_aliasing=True)
    return np.stack([np.roll(base, (7 * i, 13 * i), axis=(0, 1)) for i in range(batch)])


def median_seconds(run, repeats: int, warmup: int = 2, sync=lambda: None) -> float:
    """Median wall time of `run()` after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def skimage_per_image(images: np.ndarray, repeats: int) -> float:
    """skimage's time per image, looping over the batch as a data loader would."""
    skimage_params = {**PARAMS, "pixels_per_cell": (8, 8), "cells_per_block": (2, 2)}

    def run():
        for image in images:
            skimage_hog(image, feature_vector=False, channel_axis=-1, **skimage_params)

    return median_seconds(run, repeats, warmup=1) / len(images)


def torch_per_image(images: np.ndarray, device: str, dtype: torch.dtype, repeats: int) -> float:
    """Our time per image for the whole batch in one call (transfer to the device not timed)."""
    batch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return median_seconds(lambda: hog(batch, **PARAMS), repeats, sync=sync) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, devices: {', '.join(devices)}")
    if "cuda" in devices:
        print(f"GPU: {torch.cuda.get_device_name()}")
    row = "{:>5} {:>6} {:>8} {:>12} {:>15} {:>9}"
    print(row.format("batch", "device", "dtype", "ours ms/img", "skimage ms/img", "speed-up"))
    for batch in (1, 32):
        images = make_images(batch)
        reference = skimage_per_image(images, args.repeats)
        for device in devices:
            for dtype in (torch.float32, torch.float64):
                ours = torch_per_image(images, device, dtype, args.repeats)
                name = str(dtype).removeprefix("torch.")
                speed_up = f"{reference / ours:.1f}x"
                print(
                    row.format(batch, device, name, f"{ours * 1e3:.3f}", f"{reference * 1e3:.3f}", speed_up)
                )


if __name__ == "__main__":
    main()
