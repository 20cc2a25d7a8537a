"""Time of one StyleGAN2 training iteration's parts, facelab's G and D against NVlabs' with the same sizes.

Run: `python benchmarks/bench_stylegan2_training.py [--resolution 128] [--batch 16] [--channel-base 2048]
[--repeats 3] [--threads N]`. The defaults are the embedded generator's (experiment=stylegan2_synthetic128).
The reference is NVlabs' `networks_stylegan2` Generator and Discriminator as vendored by the dev dependency
draggan 1.1.6, in float32 (`num_fp16_res=0`, `conv_clamp=None`); on CPU its `upfirdn2d` runs its `_ref`
version, a depthwise conv, where facelab filters with two 1-D passes of shifted slices. The parts are
NVlabs' phases without the optimiser: Gmain (G forward, D forward, backward to G), Dmain (G forward without
grad, D on fakes and reals, backward to D) and Dreg (R1: D's gradient to its input, then backward through
it). Medians over the repeats after one warm-up call, the two sides taking turns; ratio = ours / NVlabs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stylegan2 import load_nvlabs_networks, median_seconds  # noqa: E402

from facelab.nets.stylegan2 import Generator  # noqa: E402
from facelab.nets.stylegan2_discriminator import Discriminator  # noqa: E402


def make_networks(networks, resolution: int, channel_base: int, channel_max: int, latent: int):
    """(ours G, D) and (NVlabs G, D) of the same sizes; G's mapping has 2 layers, as `--cfg=auto`."""
    sizes = dict(channel_base=channel_base, channel_max=channel_max)
    ours = (Generator(z_dim=latent, w_dim=latent, img_resolution=resolution, mapping_layers=2, **sizes),
            Discriminator(img_resolution=resolution, img_channels=3, mbstd_group_size=4, **sizes))
    generator = networks.Generator(z_dim=latent, c_dim=0, w_dim=latent, img_resolution=resolution,
                                   img_channels=3, mapping_kwargs=dict(num_layers=2),
                                   synthesis_kwargs=dict(num_fp16_res=0, conv_clamp=None, **sizes))
    discriminator = networks.Discriminator(c_dim=0, img_resolution=resolution, img_channels=3,
                                           num_fp16_res=0, conv_clamp=None,
                                           epilogue_kwargs=dict(mbstd_group_size=4), **sizes)
    return ours, (generator, discriminator)


def phases(generator, discriminator, nvlabs: bool, batch: int, resolution: int, latent: int) -> list:
    """Closures for Gmain, Dmain and Dreg of one pair of networks."""
    z = torch.randn(batch, latent)
    real = torch.randn(batch, 3, resolution, resolution)
    extra = dict(c=torch.zeros(batch, 0)) if nvlabs else {}

    def synthesize():
        return generator(z, **extra) if nvlabs else generator(z, noise_mode="random")

    def judge(images):
        return discriminator(images, **extra)

    def g_main():
        judge(synthesize()).sum().backward()

    def d_main():
        with torch.no_grad():
            fake = synthesize()
        (judge(fake).sum() + judge(real).sum()).backward()

    def d_reg():
        leaf = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(judge(leaf).sum(), leaf, create_graph=True)
        grad.square().sum().backward()

    return [g_main, d_main, d_reg]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channel-base", type=int, default=2048)
    parser.add_argument("--channel-max", type=int, default=128)
    parser.add_argument("--latent", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    networks, why = load_nvlabs_networks()
    if networks is None:
        raise SystemExit(f"The reference is missing: {why}. Install the dev dependencies (make env).")
    torch.manual_seed(0)
    sizes = (args.resolution, args.channel_base, args.channel_max, args.latent)
    ours, reference = make_networks(networks, *sizes)
    shape = (args.batch, args.resolution, args.latent)
    runs = phases(*ours, False, *shape) + phases(*reference, True, *shape)
    times = median_seconds(runs, args.repeats, lambda: None)
    print(f"StyleGAN2 training phases, {args.resolution} px, batch {args.batch}, channel_base "
          f"{args.channel_base}, max {args.channel_max}, {torch.get_num_threads()} threads, CPU")
    print("| phase | ours ms | NVlabs ms | ours / NVlabs |")
    print("|---|---|---|---|")
    names = ("Gmain", "Dmain", "Dreg (R1)")
    for name, mine, theirs in zip(names, times[:3], times[3:], strict=True):
        print(f"| {name} | {mine * 1000:.0f} | {theirs * 1000:.0f} | {mine / theirs:.2f} |")
    total_ours, total_theirs = sum(times[:3]), sum(times[3:])
    ratio = total_ours / total_theirs
    print(f"| all three | {total_ours * 1000:.0f} | {total_theirs * 1000:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
