"""What keeping freed memory (facelab/heap.py, `extras.keep_freed_memory`) and the shared-weight modulated
conv (`modulated_conv2d(fused=False)`) buy on a CPU, each against the old way in the same run.

Each heap setting runs in its own process (glibc's setting cannot be undone), the two alternating over
`--repeats` rounds; the median is reported. Measured there:
  - a latent-fit step of a random config-F StyleGAN2 (`--channel-base 32768`): synthesis from W+ and the
    gradient back to it, per item, at batch sizes `--batches`, with the fused (per-sample weight) form that
    facelab's generator used before and the shared-weight form it uses now;
  - the inpainting main job's training step (bench_train_step's `before` variant: the real
    `GuidedInpainting.training_step` under a Lightning Trainer), images/s at `--train-size` px, batch
    `--train-batch`.

    python benchmarks/bench_heap.py [--size 256] [--batches 1 4] [--train-size 256] [--train-batch 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

HEAPS = ("system", "kept")
FORMS = ("fused", "shared")


def fit_step_seconds(size: int, channel_base: int, batch: int, form: str, repeats: int) -> float:
    """Median seconds per item of synthesis + backward to W+ on a frozen random generator."""
    import facelab.nets.stylegan2 as stylegan2
    from facelab.nets.stylegan2_ops import modulated_conv2d

    torch.manual_seed(0)
    generator = stylegan2.Generator(img_resolution=size, channel_base=channel_base).eval()
    generator.requires_grad_(False)
    ws = generator.mapping(torch.randn(batch, generator.z_dim)).detach()
    if form == "fused":  # the form facelab's generator took before (NVlabs' eval-mode form)
        def fused_form(*args, fused, **kwargs):
            return modulated_conv2d(*args, fused=True, **kwargs)

        stylegan2.modulated_conv2d = fused_form
    times = []
    try:
        for _ in range(repeats + 1):  # the first call allocates and picks kernels
            start = time.perf_counter()
            latents = ws.clone().requires_grad_(True)
            generator.synthesis(latents).square().mean().backward()
            times.append((time.perf_counter() - start) / batch)
    finally:
        stylegan2.modulated_conv2d = modulated_conv2d
    return statistics.median(times[1:])


def train_images_per_second(size: int, batch: int) -> float:
    from bench_train_step import compose, random_vgg16_file, step_throughput

    with tempfile.TemporaryDirectory() as folder:
        cfg = compose(size, batch, 4, "before", random_vgg16_file(Path(folder)), False, folder)
        return step_throughput(cfg, warmup=1, steps=3, batch=batch)


def child(args) -> None:
    from facelab.heap import keep_freed_memory

    if args.child == "kept":
        assert keep_freed_memory(), "glibc's mallopt refused"
    results = {
        f"{form} B={batch}": fit_step_seconds(args.size, args.channel_base, batch, form, args.fit_repeats)
        for batch in args.batches
        for form in FORMS
    }
    if args.train_batch:
        results["train"] = train_images_per_second(args.train_size, args.train_batch)
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channel-base", type=int, default=32768, help="32768 = config F")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--fit-repeats", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=8, help="0: skip the training step")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the two heap settings")
    parser.add_argument("--child", choices=HEAPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    runs: dict[str, list[dict]] = {heap: [] for heap in HEAPS}
    for _ in range(args.repeats):
        for heap in HEAPS:
            command = [sys.executable, __file__, "--child", heap, *sys.argv[1:]]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[heap].append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = {heap: {k: statistics.median(r[k] for r in runs[heap]) for k in runs[heap][0]} for heap in HEAPS}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.repeats} round(s)")
    print(f"\nLatent-fit step, config F (channel_base {args.channel_base}) at {args.size} px: s per item "
          "(x = speed against fused form + system heap at the same B)")
    print("| B | fused, system heap | fused, kept heap | shared, system heap | shared, kept heap |")
    print("|---|---|---|---|---|")
    for batch in args.batches:
        base = median["system"][f"fused B={batch}"]
        cells = [f"{median[h][f'{f} B={batch}']:.2f} (x{base / median[h][f'{f} B={batch}']:.2f})"
                 for f in FORMS for h in HEAPS]
        print(f"| {batch} | " + " | ".join(cells) + " |")
    if args.train_batch:
        system, kept = median["system"]["train"], median["kept"]["train"]
        print(f"\nInpainting training step at {args.train_size} px, batch {args.train_batch}: {system:.2f} "
              f"images/s with the system heap, {kept:.2f} kept (x{kept / system:.2f})")


if __name__ == "__main__":
    main()
