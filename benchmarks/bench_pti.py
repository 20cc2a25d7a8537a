"""DragGAN on a real photo with and without PTI: seconds per optimiser step of each stage (`invert`, `pti`,
`drag` on the tuned generators, `drag` on the shared one), extrapolated to the official step counts, and the
extra memory PTI needs, on a random StyleGAN2 (config F with --channel-base 32768) and random VGG16 / AlexNet.

Every stage runs as the job runs it (`begin_stage`, then Adam steps on the batch of B photos), in memory.
Memory: the tuned weights are P floats per photo, held five times during `pti` (the start copy, the
parameter, its gradient, Adam's two moments) and written once per item and once per cache entry; on CUDA
the peak allocation of each stage is measured too.

    python benchmarks/bench_pti.py               # make bench: 128 px, channel_base 2048, B = 1 and 2
    python benchmarks/bench_pti.py --sizes 256 512 1024 --channel-base 32768 --batches 1 4 --device cuda
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from facelab.nets.stylegan2 import Generator  # noqa: E402
from facelab.nets.stylegan2_checkpoints import save_generator  # noqa: E402
from lightning_modules.draggan import DragGAN  # noqa: E402
from tests.fit_models import save_random_vgg16  # noqa: E402
from tests.metric_helpers import random_trunk_state  # noqa: E402

# The official step counts, as the job runs them (conf/experiment/draggan_photo.yaml, conf/fit/draggan.yaml).
_PHOTO = OmegaConf.load(ROOT / "conf" / "experiment" / "draggan_photo.yaml").fit.module
OFFICIAL_STEPS = {
    "invert": int(_PHOTO.stages.invert.steps),
    "pti": int(_PHOTO.stages.pti.steps),
    "drag": int(OmegaConf.load(ROOT / "conf" / "fit" / "draggan.yaml").module.stages.drag.steps),
}


def build(folder: Path, size: int, steps: int, channel_base: int, device: str) -> DragGAN:
    torch.manual_seed(0)
    generator_path = folder / f"g{size}-{channel_base}.pt"
    save_generator(Generator(img_resolution=size, channel_base=channel_base).eval(), generator_path)
    if not (folder / "vgg16.pth").exists():
        save_random_vgg16(folder / "vgg16.pth")
        torch.save(random_trunk_state("alex"), folder / "alexnet.pth")
    stages = {
        "invert": {"steps": steps, "optimizer": partial(torch.optim.Adam, lr=0.01)},
        "pti": {"steps": steps, "optimizer": partial(torch.optim.Adam, lr=3e-4)},
        "drag": {"steps": steps, "optimizer": partial(torch.optim.Adam, lr=1e-3)},
    }
    module = DragGAN(
        stages,
        generator_path,
        inversion={
            "perceptual_size": min(256, size),
            "pca_samples": 2000,
            "pca_cache_dir": str(folder / "pca"),
            "lpips_trunk_path": str(folder / "vgg16.pth"),
        },
        pti={"enabled": True, "lpips_trunk_path": str(folder / "alexnet.pth"), "lpips_threshold": 0.0},
        run_stages=["invert", "drag"],
    )
    return module.to(device)


def run_stage(module: DragGAN, stage: str, batch: dict) -> tuple[dict, float, int]:
    """(outputs, seconds per optimiser step, memory) of one stage: on CUDA the peak allocation above the
    stage's start; on the CPU how far the process's peak resident size grew during the stage (0 when the
    stage stayed under an earlier stage's peak)."""
    cuda = module.device.type == "cuda"
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    module.begin_stage(stage, batch)
    optimizer = module.stage_settings[stage]["optimizer"](module.trainable_parameters())
    steps = module.stage_steps(stage)
    for warm_up in (True, False):  # one untimed step, then the timed ones
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(1 if warm_up else steps):
            optimizer.zero_grad(set_to_none=True)
            module.stage_losses()[2]["total"].sum().backward()
            optimizer.step()
        if cuda:
            torch.cuda.synchronize()
    per_step = (time.perf_counter() - began) / steps
    outputs = module.final_results()[0]
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_rss
    return outputs, per_step, torch.cuda.max_memory_allocated() - baseline if cuda else grown


def photo_drags(module: DragGAN, batch_size: int, size: int) -> dict[str, tuple[float, int]]:
    """Every stage for B random photos: {stage: (seconds per step, peak CUDA bytes)}."""
    device = module.device
    images = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(batch_size))
    ids = [f"photo{i}" for i in range(batch_size)]
    batch = {"image": (images * 2 - 1).to(device), "meta": {"item_id": ids}}
    timings = {}
    inverted, per_step, peak = run_stage(module, "invert", batch)
    timings["invert"] = (per_step, peak)
    tuned, per_step, peak = run_stage(module, "pti", {**batch, "previous": {"invert": inverted}})
    timings["pti"] = (per_step, peak)
    handles = [[[size // 2, size // 2], [size // 3, size // 2]]] * batch_size
    targets = [[[size // 2, size // 2 + size // 16], [size // 3, size // 2 - size // 16]]] * batch_size
    meta = {"item_id": ids, "handle_points": handles, "target_points": targets}
    previous = {"invert": {"photo_w": inverted["w"]}}
    _, per_step, peak = run_stage(module, "drag", {"meta": meta, "previous": previous})
    timings["drag (shared generator)"] = (per_step, peak)
    previous["pti"] = {"photo_weights": tuned["weights"]}
    _, per_step, peak = run_stage(module, "drag", {"meta": meta, "previous": previous})
    timings["drag (tuned generators)"] = (per_step, peak)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[128], help="at least 128 (the drag reads the 128 px block)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps timed per stage")
    parser.add_argument("--channel-base", type=int, default=2048, help="32768: config F")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {name}; channel_base {args.channel_base}; {args.steps} timed steps per stage")
    print(f"official steps: {OFFICIAL_STEPS} (pti: at most; it stops early once LPIPS <= 0.06)")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            module = build(Path(folder), size, args.steps, args.channel_base, args.device)
            weights = sum(p.numel() for p in module.generator.synthesis.parameters())
            print(
                f"\n{size} px: P = {weights / 1e6:.2f} M synthesis weights = {weights * 4 / 2**20:.0f} MiB "
                f"per photo on disk (item copy + cache entry each), {5 * weights * 4 / 2**20:.0f} MiB held "
                "during pti (start, parameter, gradient, 2 Adam moments)"
            )
            for batch_size in args.batches:
                timings = photo_drags(module, batch_size, size)
                for stage, (per_step, peak) in timings.items():
                    official = OFFICIAL_STEPS[stage.split()[0]]
                    label = "peak" if args.device == "cuda" else "peak RSS grew"
                    memory = f", {label} {peak / 2**20:.0f} MiB"
                    print(
                        f"  B={batch_size} {stage:24s} {per_step:8.3f} s/step, {per_step / batch_size:8.3f} "
                        f"s/step/photo -> {official} steps: {official * per_step / batch_size:8.1f} s/photo"
                        f"{memory}"
                    )


if __name__ == "__main__":
    main()
