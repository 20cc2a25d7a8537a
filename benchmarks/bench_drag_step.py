"""Time of one DragGAN step: the renderer's formula against facelab's, on a random config-F generator.

Run: `python benchmarks/bench_drag_step.py [--quick] [--repeats N] [--resolutions 256 512] [--batches 1 8]`.

A step is what one drag iteration costs: forward to the 128x128 block's features, point tracking, motion
supervision (and the mask term with `--mask`), backward to the W+ latents.
- official: full synthesis with every block (the renderer's `G(..., return_feature=True)`), the features
  resized to the image size (`F.interpolate`), tracking and the loss on that map, point by point;
- ours: `stop_after=128`, windows of the resized map around the handles only (facelab/ops/drag_step.py).
Both run on the same latents and handles; the run checks that they agree (tracked points equal, losses and
gradients to float tolerance) and prints the largest differences. Weights are random (no download); B drags
of 3 handles each, batched as one fit does. Times are medians over the repeats after one warm-up step, the
two formulas taking turns, so a load change on a shared machine hits both alike; ratio = official / ours.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from facelab.nets.stylegan2 import Generator
from facelab.ops.drag import compose_ws, drag_features
from facelab.ops.drag_step import DragSettings, drag_start, drag_step

FORMULAS = {"official": (True, "full"), "ours": (False, "windowed")}  # (full synthesis, formulation)


def make_drags(batch: int, resolution: int, with_mask: bool, device: str):
    """B drags of 3 handles each, 8 to 30 px from their targets (given at 512 px and scaled)."""
    generator = torch.Generator().manual_seed(batch)
    scale = resolution / 512
    handles = (torch.randint(100, 412, (batch, 3, 2), generator=generator) * scale).long()
    offsets = torch.randint(-30, 31, (batch, 3, 2), generator=generator)
    targets = (handles + (offsets * scale).round().long()).clamp(0, resolution - 1).float()
    valid = torch.ones(batch, 3, dtype=torch.bool)
    mask = None
    if with_mask:  # editable: the middle half of the image
        mask = torch.zeros(batch, 1, resolution, resolution)
        mask[..., resolution // 4 : 3 * resolution // 4, resolution // 4 : 3 * resolution // 4] = 1
        mask = mask.to(device)
    return handles.to(device), targets.to(device), valid.to(device), mask


def make_step(name: str, generator: Generator, start_ws, drags, resolution: int):
    """A closure running one step (forward, tracking, losses, backward) and returning what it computed."""
    full_synthesis, formulation = FORMULAS[name]
    settings = DragSettings(formulation=formulation)
    handles, targets, valid, mask = drags
    with torch.no_grad():
        features0 = drag_features(generator, start_ws, full_synthesis=full_synthesis)
    start = drag_start(features0, handles, resolution, settings)
    torch.manual_seed(0)  # the same perturbed latents for both formulas
    edited = (start_ws[:, :6] + 0.05 * torch.randn_like(start_ws[:, :6])).requires_grad_(True)

    def run():
        edited.grad = None
        features = drag_features(generator, compose_ws(edited, start_ws), full_synthesis=full_synthesis)
        step = drag_step(features, start, handles, targets, valid, mask, resolution, settings)
        step.loss.sum().backward()
        return step.handle_points, step.loss.detach(), edited.grad.clone()
    return run


def time_config(resolution: int, batch: int, channel_base: int, repeats: int, with_mask: bool, device: str):
    torch.manual_seed(0)
    generator = Generator(img_resolution=resolution, channel_base=channel_base).eval().requires_grad_(False)
    generator = generator.to(device)
    z = torch.randn(batch, 512, device=device)
    with torch.no_grad():
        start_ws = generator.mapping(z, truncation_psi=0.7)
    drags = make_drags(batch, resolution, with_mask, device)
    steps = {name: make_step(name, generator, start_ws, drags, resolution) for name in FORMULAS}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = {name: [] for name in FORMULAS}
    outputs = {}
    for repeat in range(repeats + 1):
        for name, run in steps.items():
            began = time.perf_counter()
            outputs[name] = run()
            sync()
            if repeat:
                times[name].append(time.perf_counter() - began)
    (points_a, loss_a, grad_a), (points_b, loss_b, grad_b) = outputs["official"], outputs["ours"]
    agreement = dict(points_equal=bool((points_a == points_b).all()),
                     loss_rel=float(((loss_a - loss_b).abs() / loss_a.abs().clamp(min=1e-12)).max()),
                     grad_rel=float((grad_a - grad_b).abs().max() / grad_a.abs().max().clamp(min=1e-30)))
    return {name: statistics.median(values) for name, values in times.items()}, agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channel-base", type=int, default=32768, help="32768 = config F (512 channels max)")
    parser.add_argument("--mask", action="store_true", help="add the fixed-region term (computed in full)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="256 px, B = 1, one repeat (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.quick:
        args.resolutions, args.batches, args.repeats = [256], [1], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads, "
          f"channel_base {args.channel_base}, mask term {'on' if args.mask else 'off'}, 3 handles per drag")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
    header = "{:>5} {:>3} {:>12} {:>9} {:>13} {:>13} {:>9} {:>7} {:>9} {:>9}"
    print(header.format("res", "B", "official ms", "ours ms", "off items*s/s", "ours items*s/s", "off/ours",
                        "points", "loss rel", "grad rel"))
    for resolution in args.resolutions:
        for batch in args.batches:
            seconds, agreement = time_config(resolution, batch, args.channel_base, args.repeats, args.mask,
                                             args.device)
            official, ours = seconds["official"], seconds["ours"]
            print(header.format(resolution, batch, f"{official * 1e3:.0f}", f"{ours * 1e3:.0f}",
                                f"{batch / official:.2f}", f"{batch / ours:.2f}", f"{official / ours:.2f}",
                                "equal" if agreement["points_equal"] else "DIFFER",
                                f"{agreement['loss_rel']:.1e}", f"{agreement['grad_rel']:.1e}"), flush=True)


if __name__ == "__main__":
    main()
