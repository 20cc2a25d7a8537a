"""`facelab-convert IN OUT [--format facelab|rosinality]`: rewrite a StyleGAN2 generator checkpoint.

IN may be an NVlabs .pkl (read without running any code from it), a rosinality .pt or a facelab file.
OUT is facelab's own format (loads with `torch.load(weights_only=True)`, no NVlabs code needed), or with
`--format rosinality` rosinality's `{"g_ema", "latent_avg"}` layout, which Barbershop's and other
rosinality-based code read as their `ffhq.pt`.
"""

from __future__ import annotations

import argparse
import io
import sys

import torch

from facelab.io.files import atomic_write_bytes
from facelab.nets.stylegan2_checkpoints import load_generator, nvlabs_to_rosinality, save_generator


def convert_main(argv: list[str] | None = None) -> int:
    """Parse `IN OUT`, load the generator from IN, write it to OUT; returns the exit status."""
    parser = argparse.ArgumentParser(prog="facelab-convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="NVlabs .pkl, rosinality .pt (g_ema + latent_avg) or facelab file")
    parser.add_argument("target", help="output file")
    parser.add_argument(
        "--format",
        choices=("facelab", "rosinality"),
        default="facelab",
        help="facelab's own file (default) or rosinality's g_ema + latent_avg layout",
    )
    args = parser.parse_args(argv)
    generator = load_generator(args.source)
    if args.format == "rosinality":
        buffer = io.BytesIO()
        torch.save(nvlabs_to_rosinality(generator.state_dict()), buffer)
        atomic_write_bytes(args.target, buffer.getvalue())
    else:
        save_generator(generator, args.target)
    config = ", ".join(f"{k}={v}" for k, v in generator.config.items())
    print(f"Wrote {args.target}: StyleGAN2 generator ({config}), num_ws={generator.num_ws}")
    return 0


if __name__ == "__main__":
    sys.exit(convert_main())
