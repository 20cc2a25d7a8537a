"""The main job's training step (stage 1 + stage 2 with the HOG guide, mode=both): images/s of the real
`GuidedInpainting.training_step` driven by a Lightning Trainer over the real datamodule, and where the time
goes, part by part.

Variants (each a set of config overrides; `before` is the configuration every run used before issue 13):
  before         float32, NCHW, data and masks made in the training process (num_workers=0)
  channels_last  + model.channels_last=true
  bf16           + trainer.precision=bf16-mixed (generators and VGG in bf16; HOG, D and losses float32)
  workers        + data.num_workers=1 (faces and masks made while the step runs; pinned memory on CUDA)
  all            all three (what experiment=hog_celeba256 turns on for a GPU)
Variants alternate over `--repeats` rounds (the machine may be shared) and the median is reported, with the
ratio to `before` measured in the same run. The breakdown times each part alone (median of
`--part-repeats` calls after a warm-up call) with the settings of `before` and of the fastest variant, on
one batch: data and masks (collating a batch in-process), HOG, G_H, D_H, G_I, D_I (forward + backward, D
counted for its D step and for G's adversarial term), VGG losses, the four optimiser steps; shares are of
their sum (on a shared machine the parts and the whole step are measured at different moments).

Networks: the embedded default's widths (32 channels, 4 residual blocks) unless --full-size (EdgeConnect's
64 / 8); perceptual and style losses on, with a randomly initialised VGG16 (no weights can be downloaded
here: the arithmetic is the same). Usage (default grid: 64 and 256 px x batch 8 and 32 on a GPU, 64 px x
batch 8 on a CPU):
  python benchmarks/bench_train_step.py [--sizes 64 256] [--batches 8 32] [--steps 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra.utils import instantiate  # noqa: E402

from facelab.cli.common import CONFIG_DIR  # noqa: E402
from facelab.ops.masks import masked_input  # noqa: E402

VARIANTS = {
    "before": [],
    "channels_last": ["model.channels_last=true"],
    "bf16": ["trainer.precision=bf16-mixed"],
    "workers": ["data.num_workers=1"],
    "all": ["model.channels_last=true", "trainer.precision=bf16-mixed", "data.num_workers=1"],
}
PARTS = ("data and masks", "HOG", "G_H", "D_H", "G_I", "D_I", "VGG losses", "optimiser steps")


def random_vgg16_file(folder: Path) -> Path:
    """torchvision's VGG16 trunk, randomly initialised, saved under its real file name and keys."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    path = folder / "vgg16-397923af.pth"
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, path)
    return path


def compose(size: int, batch: int, batches: int, variant: str, vgg_file: Path, full_size: bool, run_dir):
    """The train config of one measurement: the embedded default at this size and batch, VGG losses on."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    widths = []  # the embedded default experiment's (32 channels, 4 blocks) unless full_size
    if full_size:
        widths = ["model.networks.base_channels=64", "model.networks.n_residual_blocks=8",
                  "model.networks.discriminator_channels=64"]
    overrides = [
        f"paths.output_dir={run_dir}", "experiment=embedded_default",
        f"data.faces.size={size}", f"data.batch_size={batch}", f"data.faces.train_length={batch * batches}",
        "data.faces.val_length=1", f"data.pin_memory={str(torch.cuda.is_available()).lower()}",
        "model.losses.inpaint.perceptual=0.1", "model.losses.inpaint.style=250",
        f"model.losses.vgg_weights={vgg_file}",
        "trainer.max_epochs=1", "trainer.limit_val_batches=0", "+trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        "+trainer.enable_checkpointing=false", "extras.print_config=false",
        *widths, *VARIANTS[variant],
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


class StepTimer:
    """Lightning callback: the time at the end of each training batch (data wait included in the next)."""

    def __init__(self):
        import pytorch_lightning as pl

        timer = self

        class _Callback(pl.Callback):
            def on_train_batch_end(self, *args, **kwargs):
                timer.ends.append(time.perf_counter())

        self.ends: list[float] = []
        self.callback = _Callback()


def step_throughput(cfg, warmup: int, steps: int, batch: int) -> float:
    """Images/s of `steps` training steps after `warmup` ones, data loading included."""
    from facelab.cli.train import _set_float32_precision

    torch.manual_seed(0)
    _set_float32_precision(cfg)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model, _convert_="all")
    timer = StepTimer()
    trainer = instantiate(cfg.trainer, callbacks=[timer.callback], logger=False,
                          limit_train_batches=warmup + steps)
    trainer.fit(model, datamodule=datamodule)
    return batch * steps / (timer.ends[-1] - timer.ends[warmup - 1])


def _median_seconds(function, repeats: int) -> float:
    """Median seconds of `function()` after one untimed call (first calls allocate and pick kernels)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def breakdown(cfg, repeats: int = 3) -> dict[str, float]:
    """Seconds per part for one batch, each part alone, with the variant's precision and memory format."""
    torch.manual_seed(0)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model, _convert_="all")
    datamodule.setup("fit")
    model.setup("fit")
    loader = torch.utils.data.DataLoader(datamodule.split("train"), batch_size=cfg.data.batch_size)
    def _timed(function) -> float:
        return _median_seconds(function, repeats)

    seconds = {"data and masks": _timed(lambda: next(iter(loader)))}
    batch = next(iter(loader))
    image, mask = batch["image"], batch["mask"]
    bf16 = str(cfg.trainer.precision) == "bf16-mixed"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    adversarial, shape, inpaint = model.adversarial, model.shape_stage, model.inpaint_stage
    with autocast:
        seconds["HOG"] = _timed(lambda: model.guide.compute(image))
        guide = model.guide.compute(image)
        image_masked = masked_input(image, mask, model.hparams.hole_fill)

        def generator(run):
            output = run()
            output.float().sum().backward()
            return output.detach().requires_grad_()

        seconds["G_H"] = _timed(lambda: generator(lambda: model.predict_guide(image_masked, guide, mask)[0]))
        predicted = generator(lambda: model.predict_guide(image_masked, guide, mask)[0])
        real, fake = model._shape_pairs(image, guide, predicted)

        def discriminator(stage, real, fake):
            stage.discriminator_loss(adversarial, real, fake).backward()
            stage.generator_adversarial(adversarial, fake).backward()

        seconds["D_H"] = _timed(lambda: discriminator(shape, real, fake))
        seconds["G_I"] = _timed(lambda: generator(lambda: model.inpaint_image(image_masked, guide, mask)))
        pred = generator(lambda: model.inpaint_image(image_masked, guide, mask))
        seconds["D_I"] = _timed(lambda: discriminator(inpaint, image, pred))
        vgg_input = model._memory_format(pred.detach().requires_grad_())
        seconds["VGG losses"] = _timed(
            lambda: sum(model.perceptual_style(vgg_input, model._memory_format(image), mask)).backward()
        )
    optimizers = model.configure_optimizers()  # gradients are in place from the parts above
    seconds["optimiser steps"] = _timed(lambda: [optimizer.step() for optimizer in optimizers])
    return seconds


def measure(configs: dict, batch: int, args) -> None:
    """Print images/s per variant (median over rounds, ratio to before) and the breakdowns."""
    rates = {variant: [] for variant in configs}
    step_throughput(configs["before"], args.warmup, 1, batch)  # untimed: the process's first fit is slower
    order = list(configs)
    for round_index in range(args.repeats):  # each round starts at another variant: no fixed first place
        start = round_index % len(order)
        for variant in order[start:] + order[:start]:
            rates[variant].append(step_throughput(configs[variant], args.warmup, args.steps, batch))
    median = {variant: statistics.median(values) for variant, values in rates.items()}
    size = configs["before"].data.faces.size
    print(f"\n== {size} px, batch {batch}: images/s (median of {args.repeats} rounds), ratio to before")
    for variant, rate in median.items():
        print(f"  {variant:14s} {rate:8.2f} img/s   x{rate / median['before']:.2f}")
    for variant in dict.fromkeys(("before", max(median, key=median.get))):
        parts = breakdown(configs[variant], args.part_repeats)
        total = sum(parts.values())
        shares = ", ".join(f"{k} {1e3 * s:.0f} ms ({100 * s / total:.0f} %)" for k, s in parts.items())
        print(f"  breakdown {variant}: parts alone sum to {1e3 * total:.0f} ms (the step above: "
              f"{1e3 * batch / median[variant]:.0f} ms): {shares}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The grid on a GPU; on a CPU only its smallest point by default (the grid: hours on 2 cores).
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256] if on_gpu else [64])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32] if on_gpu else [8])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the variants (median)")
    parser.add_argument("--part-repeats", type=int, default=3, help="timed calls per part (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--full-size", action="store_true", help="EdgeConnect's 64-channel, 8-block nets")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = ["before", *[v for v in args.variants if v != "before"]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; "
          f"{'full-size' if args.full_size else 'embedded-default'} networks, VGG losses on")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        vgg_file = random_vgg16_file(folder)
        for size in args.sizes:
            for batch in args.batches:
                configs = {
                    v: compose(size, batch, args.warmup + args.steps, v, vgg_file, args.full_size, folder / v)
                    for v in variants
                }
                measure(configs, batch, args)


if __name__ == "__main__":
    main()
