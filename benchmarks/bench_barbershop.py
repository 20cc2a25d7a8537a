"""Barbershop speed: seconds per transfer at equal steps for B transfers fitted together, each stage's share
and its per-step time, on a random config-F generator (and random full-size BiSeNet and VGG16).

Every stage runs as the job runs it (`begin_stage`, then Adam steps on the batch), in memory, with the same
few steps per stage for every B, so the ratio items/s(B) / items/s(1) is the speed-up of batching. The two
embeddings run on 3B images (identity, shape, appearance of each transfer, all distinct), the other stages
on B transfers with both reference pairs (shape != appearance).

    python benchmarks/bench_barbershop.py                       # 256 px, B = 1, 4, 16, 2 steps per stage
    python benchmarks/bench_barbershop.py --sizes 256 512 1024 --batches 1 4 16 --steps 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facelab.nets.stylegan2 import Generator  # noqa: E402
from facelab.nets.stylegan2_checkpoints import save_generator  # noqa: E402
from lightning_modules.barbershop import Barbershop  # noqa: E402
from tests.fit_models import save_random_bisenet, save_random_vgg16  # noqa: E402

ORDER = (
    "embed_w",
    "embed_fs",
    "parse",
    "mask_fill_1",
    "mask_fill_2",
    "align_identity",
    "align_reference",
    "blend",
)


def build(folder: Path, size: int, steps: int) -> Barbershop:
    torch.manual_seed(0)
    save_generator(
        Generator(img_resolution=size).eval(), folder / f"g{size}.pt"
    )  # config F: 512-d, full channels
    parser = folder / "seg.pth"
    vgg = folder / "vgg16.pth"
    if not parser.exists():
        save_random_bisenet(parser)
        save_random_vgg16(vgg)
    stages = {
        name: {"steps": 0 if name == "parse" else steps, "optimizer": partial(torch.optim.Adam, lr=0.01)}
        for name in ORDER
    }
    return Barbershop(
        stages,
        folder / f"g{size}.pt",
        parser,
        parse_size=min(512, size),
        perceptual_size=256,
        pca_samples=10_000,
        pca_cache_dir=str(folder / "pca"),
        lpips_trunk_path=str(vgg),
        vgg_weights_path=str(vgg),
    )


def run_stage(module: Barbershop, stage: str, batch: dict) -> tuple[dict, float, int]:
    """(outputs, seconds, steps) of one stage on `batch`, as the job runs it."""
    began = time.perf_counter()
    module.begin_stage(stage, batch)
    steps = module.stage_steps(stage)
    if steps:
        optimizer = module.stage_settings[stage]["optimizer"](module.trainable_parameters())
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            module.stage_losses()[2]["total"].sum().backward()
            optimizer.step()
            with torch.no_grad():
                module.project(
                    stage,
                    {
                        n: getattr(module, f"latent_{n}")
                        for n in module.latent_names
                        if getattr(module, f"latent_{n}") is not None
                    },
                )
    outputs = module.final_results()[0]
    return outputs, time.perf_counter() - began, steps


def transfer(module: Barbershop, batch_size: int, size: int) -> dict[str, tuple[float, int]]:
    """All stages for `batch_size` transfers of distinct random images; {stage: (seconds, steps)}."""
    generator = torch.Generator().manual_seed(batch_size)
    images = torch.rand(3 * batch_size, 3, size, size, generator=generator) * 2 - 1
    timings, per_image = {}, {}
    ids = [f"img{i}" for i in range(3 * batch_size)]
    batch = {"image": images, "meta": {"item_id": ids}}
    for stage in ("embed_w", "embed_fs"):
        outputs, seconds, steps = run_stage(module, stage, batch)
        timings[stage] = (seconds, steps)
        per_image[stage] = outputs
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
        outputs, seconds, steps = run_stage(module, stage, {**item_batch, "previous": previous})
        timings[stage] = (seconds, steps)
        previous[stage] = outputs
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps of every stage")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, {torch.get_num_threads()} threads, {args.steps} steps per stage")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            module = build(Path(folder), size, args.steps).to(device)
            base = None
            for batch_size in args.batches:
                timings = transfer(module, batch_size, size)
                total = sum(seconds for seconds, _ in timings.values())
                rate = batch_size / total
                base = base or rate
                print(
                    f"\n{size} px, B = {batch_size}: {total / batch_size:.2f} s per transfer at "
                    f"{args.steps} steps per stage, {rate:.3f} transfers/s, x{rate / base:.2f} the items/s "
                    f"of B = {args.batches[0]}"
                )
                print("| stage | share | ms per step (whole batch) | ms per step per item |")
                print("|---|---|---|---|")
                for stage, (seconds, steps) in timings.items():
                    per_step = seconds / max(steps, 1) * 1000
                    items = 3 * batch_size if stage.startswith("embed") else batch_size
                    print(f"| {stage} | {seconds / total:.0%} | {per_step:.0f} | {per_step / items:.0f} |")


if __name__ == "__main__":
    main()
