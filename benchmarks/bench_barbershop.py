"""Barbershop speed: seconds per transfer at equal steps for B transfers fitted together, each stage's share
and its per-step time, on a random StyleGAN2 (config F with --channel-base 32768) and random full-size
BiSeNet and VGG16.

Every stage runs as the job runs it (`begin_stage`, then Adam steps on the batch), in memory, with the same
few steps per stage for every B, so the ratio items/s(B) / items/s(1) is the speed-up of batching. The two
embeddings run on 3B images (identity, shape, appearance of each transfer, all distinct), the other stages
on B transfers with both reference pairs (shape != appearance).

    python benchmarks/bench_barbershop.py           # make bench: 256 px, B = 1 and 4, channel_base 4096
    python benchmarks/bench_barbershop.py --channel-base 32768 --sizes 256 512 1024 --batches 1 4 16 --steps 3
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facelab.heap import keep_freed_memory  # noqa: E402
from facelab.nets.stylegan2 import Generator  # noqa: E402
from facelab.nets.stylegan2_checkpoints import save_generator  # noqa: E402
from lightning_modules.barbershop import Barbershop  # noqa: E402
from tests.fit_models import save_random_bisenet, save_random_vgg16  # noqa: E402

# The stages and their official step counts, as the job runs them (conf/fit/barbershop.yaml).
_STAGES = OmegaConf.load(
    Path(__file__).resolve().parent.parent / "conf" / "fit" / "barbershop.yaml"
).module.stages
ORDER = tuple(_STAGES)
OFFICIAL_STEPS = {name: int(settings.steps) for name, settings in _STAGES.items()}


def build(folder: Path, size: int, steps: int, channel_base: int) -> Barbershop:
    torch.manual_seed(0)
    generator = Generator(img_resolution=size, channel_base=channel_base).eval()  # 32768: config F
    save_generator(generator, folder / f"g{size}-{channel_base}.pt")
    parser, vgg = folder / "seg.pth", folder / "vgg16.pth"
    if not parser.exists():
        save_random_bisenet(parser)
        save_random_vgg16(vgg)
    stages = {
        name: {"steps": 0 if name == "parse" else steps, "optimizer": partial(torch.optim.Adam, lr=0.01)}
        for name in ORDER
    }
    return Barbershop(
        stages,
        folder / f"g{size}-{channel_base}.pt",
        parser,
        parse_size=min(512, size),
        perceptual_size=min(256, size),
        pca_samples=10_000,
        pca_cache_dir=str(folder / "pca"),
        lpips_trunk_path=str(vgg),
        vgg_weights_path=str(vgg),
    )


def run_stage(module: Barbershop, stage: str, batch: dict, warmup: int) -> tuple[dict, float, float]:
    """(outputs, seconds per optimiser step, seconds of set-up + outputs) of one stage on `batch`; the first
    `warmup` steps (allocation, kernel choice) count as set-up, the steps after them are timed."""
    began = time.perf_counter()
    module.begin_stage(stage, batch)
    steps, step_seconds = module.stage_steps(stage), 0.0
    if steps:
        optimizer = module.stage_settings[stage]["optimizer"](module.trainable_parameters())
        for step in range(warmup + steps):
            if step == warmup:
                stepping = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            module.stage_losses()[2]["total"].sum().backward()
            optimizer.step()
        step_seconds = (time.perf_counter() - stepping) / steps
        steps += warmup  # a warm-up step is one of the stage's steps; what it costs beyond one is set-up
    outputs = module.final_results()[0]
    return outputs, step_seconds, time.perf_counter() - began - step_seconds * steps


def transfer(module: Barbershop, batch_size: int, size: int, warmup: int) -> dict[str, tuple[float, float]]:
    """All stages for `batch_size` transfers of distinct random images: {stage: (s per step, s overhead)}."""
    generator = torch.Generator().manual_seed(batch_size)
    images = torch.rand(3 * batch_size, 3, size, size, generator=generator) * 2 - 1
    timings, per_image = {}, {}
    batch = {"image": images, "meta": {"item_id": [f"img{i}" for i in range(3 * batch_size)]}}
    for stage in ("embed_w", "embed_fs"):
        outputs, per_step, overhead = run_stage(module, stage, batch, warmup)
        timings[stage], per_image[stage] = (per_step, overhead), outputs
        batch = {**batch, "previous": {**batch.get("previous", {}), stage: outputs}}
    columns = ("identity", "shape", "appearance")
    previous = {
        stage: {f"{c}_{name}": value[k::3] for k, c in enumerate(columns) for name, value in out.items()}
        for stage, out in per_image.items()
    }
    item_batch = {c: images[k::3] for k, c in enumerate(columns)}
    item_batch["meta"] = {
        "item_id": [f"t{i}" for i in range(batch_size)],
        "shape_path": [f"s{i}" for i in range(batch_size)],
        "appearance_path": [f"a{i}" for i in range(batch_size)],
    }
    for stage in ORDER[2:]:
        outputs, per_step, overhead = run_stage(module, stage, {**item_batch, "previous": previous}, warmup)
        timings[stage], previous[stage] = (per_step, overhead), outputs
    return timings


def peak_memory_gib() -> float:
    """The process's peak resident size (Linux reports KiB), or CUDA's peak allocation on a GPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps timed per stage")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per stage before them")
    parser.add_argument(
        "--channel-base",
        type=int,
        default=4096,
        help="32768 = config F; 4096 (default) keeps make bench short",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--system-heap", action="store_true", help="leave glibc's malloc as it is")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    heap = "system heap" if args.system_heap or not keep_freed_memory() else "freed memory kept (as a job)"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"device {device}, {torch.get_num_threads()} threads, {args.steps} timed steps per stage, "
        f"channel_base {args.channel_base}, {heap}; per transfer at the official steps = (set-up and "
        "outputs + official steps x time per step) / B"
    )
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            module = build(Path(folder), size, args.steps, args.channel_base).to(device)
            rates = {}
            for batch_size in args.batches:
                try:
                    timings = transfer(module, batch_size, size, args.warmup)
                except torch.OutOfMemoryError:  # a GPU's; larger batches would not fit either
                    print(f"\n{size} px, B = {batch_size}: out of GPU memory (3B = {3 * batch_size} images)")
                    torch.cuda.empty_cache()
                    break
                seconds = {
                    s: OFFICIAL_STEPS[s] * per_step + overhead for s, (per_step, overhead) in timings.items()
                }
                total = sum(seconds.values())
                rates[batch_size] = batch_size / total
                base = rates[args.batches[0]]
                print(
                    f"\n{size} px, B = {batch_size}: {total / batch_size:.1f} s per transfer at the official "
                    f"steps, {rates[batch_size] * 3600:.1f} transfers/h, x{rates[batch_size] / base:.2f} the "
                    "items/s of "
                    f"B = {args.batches[0]}; peak resident memory so far {peak_memory_gib():.1f} GiB"
                )
                print("| stage | share | s per step (batch) | s per step per transfer |")
                print("|---|---|---|---|")
                for stage, (per_step, _) in timings.items():
                    print(
                        f"| {stage} | {seconds[stage] / total:.0%} | {per_step:.2f} "
                        f"| {per_step / batch_size:.2f} |"
                    )


if __name__ == "__main__":
    main()
