"""Time of facelab's StyleGAN2 generator against NVlabs' generator with the same weights, config F, batch 1.

Run: `python benchmarks/bench_stylegan2.py [--quick] [--repeats N] [--resolutions 256 512 1024]`.
The reference is NVlabs' `networks_stylegan2` as vendored by the dev dependency draggan 1.1.6 (its
`stylegan2/training/networks.py`), built in float32 (`num_fp16_res=0`, `conv_clamp=None`, as ffhq.pkl),
so both sides compute the same function; on CPU its custom ops run their `_ref` PyTorch versions. Weights
are random (no download). Times are medians over the repeats after one warm-up call, the two sides
taking turns; ratio = ours / NVlabs in the same run (below 1 = ours faster). Without draggan, only ours
is timed.

The DragGAN step is what one drag iteration needs from the generator: the 128x128 block's features
(DragGAN's `feature_idx=5` on FFHQ 512) and the backward pass from them to the W+ latents. DragGAN runs the
full synthesis for it; facelab's `stop_after=128` ends after that block.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

from facelab.heap import keep_freed_memory
from facelab.nets.stylegan2 import Generator

FEATURE_RESOLUTION = 128  # the block DragGAN reads its features from


def load_nvlabs_networks():
    """NVlabs' `training.networks` module from draggan's vendored copy, or (None, why not)."""
    spec = importlib.util.find_spec("draggan")
    if spec is None:
        return None, "draggan (dev dependency) is not installed"
    sys.path.insert(0, str(Path(spec.submodule_search_locations[0]) / "stylegan2"))  # it imports top-level
    try:
        return importlib.import_module("training.networks"), ""
    except Exception as error:  # any import failure only removes the reference column
        return None, f"cannot import NVlabs' networks from draggan: {error!r}"


def median_seconds(runs: list, repeats: int, sync) -> list[float]:
    """Median wall time of each closure after one untimed warm-up call each. The closures take turns in
    every repeat, so a load change on a shared machine hits them alike and their ratios stay fair."""
    times: list[list[float]] = [[] for _ in runs]
    for repeat in range(repeats + 1):
        for run, run_times in zip(runs, times, strict=True):
            start = time.perf_counter()
            run()
            sync()
            if repeat > 0:
                run_times.append(time.perf_counter() - start)
    return [statistics.median(run_times) for run_times in times]


def make_generators(networks, resolution: int, device: str):
    """Ours with random config-F weights, and NVlabs' float32 generator holding the same state dict."""
    torch.manual_seed(0)
    ours = Generator(img_resolution=resolution).eval().requires_grad_(False)
    reference = None
    if networks is not None:
        reference = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution,
                                       img_channels=3, mapping_kwargs=dict(num_layers=8),
                                       synthesis_kwargs=dict(channel_base=32768, channel_max=512,
                                                             num_fp16_res=0, conv_clamp=None))
        reference.load_state_dict(ours.state_dict(), strict=True)
        reference = reference.eval().requires_grad_(False).to(device)
    return ours.to(device), reference


def forward_backward(synthesize, ws: torch.Tensor):
    """A closure: synthesis from a fresh leaf copy of ws, then backward of a scalar of what it returns."""
    def run():
        leaf = ws.detach().clone().requires_grad_(True)
        synthesize(leaf).square().mean().backward()
    return run


def time_resolution(networks, resolution: int, device: str, repeats: int) -> tuple[list, list]:
    """(rows of the synthesis table, row of the DragGAN-step table) for one resolution and device."""
    ours, reference = make_generators(networks, resolution, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ws = ours.mapping(torch.randn(1, 512, device=device), truncation_psi=0.7)  # [1, num_ws, 512]
    feature_index = ours.synthesis.block_resolutions.index(FEATURE_RESOLUTION)

    def ours_full(leaf):
        return ours.synthesis(leaf)

    def nvlabs_full(leaf):
        return reference.synthesis(leaf, noise_mode="const", force_fp32=True)

    def ours_drag_full(leaf):
        return ours.synthesis(leaf, return_features=True)[1][FEATURE_RESOLUTION]

    def ours_drag_stop(leaf):
        return ours.synthesis(leaf, stop_after=FEATURE_RESOLUTION)

    def nvlabs_drag_full(leaf):  # DragGAN's renderer: full synthesis with return_feature, then feat[5]
        _, features = reference.synthesis(leaf, noise_mode="const", force_fp32=True, return_feature=True)
        return features[feature_index]

    def forward_only(synthesize):
        def run():
            with torch.no_grad():
                synthesize(ws)
        return run

    def timed(*closures):
        """Times of our closures, then of NVlabs' one (None without the reference)."""
        times = median_seconds(list(closures if reference is not None else closures[:-1]), repeats, sync)
        return times if reference is not None else [*times, None]

    rows = [("synthesis forward", *timed(forward_only(ours_full), forward_only(nvlabs_full))),
            ("synthesis forward+backward",
             *timed(forward_backward(ours_full, ws), forward_backward(nvlabs_full, ws)))]
    drag = timed(forward_backward(ours_drag_full, ws), forward_backward(ours_drag_stop, ws),
                 forward_backward(nvlabs_drag_full, ws))
    return rows, drag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="256 px only, one repeat (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--system-heap", action="store_true", help="leave glibc's malloc as it is")
    args = parser.parse_args()
    if args.quick:
        args.resolutions, args.repeats = [256], 1
    if min(args.resolutions) <= FEATURE_RESOLUTION:
        parser.error(f"resolutions must be above {FEATURE_RESOLUTION} (the DragGAN feature block)")
    if args.threads:
        torch.set_num_threads(args.threads)
    networks, why_not = load_nvlabs_networks()
    kept = not args.system_heap and keep_freed_memory()  # as every facelab job runs (facelab/heap.py)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, devices: {', '.join(devices)}, "
          f"{'freed memory kept' if kept else 'system heap'}")
    if "cuda" in devices:
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"reference: {'NVlabs networks_stylegan2 (draggan 1.1.6)' if networks else f'none ({why_not})'}")

    def ms(seconds):
        return "-" if seconds is None else f"{seconds * 1e3:.0f}"

    def ratio(numerator, denominator):
        return "-" if denominator is None else f"{numerator / denominator:.2f}"

    row = "{:>6} {:>5} {:<28} {:>9} {:>10} {:>12}"
    drag_row = "{:>6} {:>5} {:>15} {:>18} {:>10} {:>15} {:>12}"
    drag_lines = []
    print(row.format("device", "res", "measurement", "ours ms", "NVlabs ms", "ours/NVlabs"))
    for device in devices:
        for resolution in args.resolutions:
            rows, (full, stop, nvlabs_full) = time_resolution(networks, resolution, device, args.repeats)
            for name, mine, theirs in rows:
                line = row.format(device, resolution, name, ms(mine), ms(theirs), ratio(mine, theirs))
                print(line, flush=True)
            drag_lines.append(drag_row.format(device, resolution, ms(full), ms(stop), ratio(stop, full),
                                              ms(nvlabs_full), ratio(stop, nvlabs_full)))
    print(f"\nDragGAN step: forward to the {FEATURE_RESOLUTION}px block's features + backward to ws")
    print(drag_row.format("device", "res", "ours full ms", "ours stop_after ms", "stop/full",
                          "NVlabs full ms", "stop/NVlabs"))
    print("\n".join(drag_lines))


if __name__ == "__main__":
    main()
