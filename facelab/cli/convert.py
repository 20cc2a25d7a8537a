"""`facelab-convert IN OUT`: rewrite a StyleGAN2 generator checkpoint in facelab's own format.

IN may be an NVlabs .pkl (read without running any code from it), a rosinality .pt or a facelab file;
OUT loads afterwards with `torch.load(weights_only=True)` and needs no NVlabs code on the path.
"""

from __future__ import annotations

import argparse
import sys

from facelab.nets.stylegan2_checkpoints import load_generator, save_generator


def convert_main(argv: list[str] | None = None) -> int:
    """Parse `IN OUT`, load the generator from IN, write it to OUT; returns the exit status."""
    parser = argparse.ArgumentParser(prog="facelab-convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="NVlabs .pkl, rosinality .pt (g_ema + latent_avg) or facelab file")
    parser.add_argument("target", help="output file in facelab's own format")
    args = parser.parse_args(argv)
    generator = load_generator(args.source)
    save_generator(generator, args.target)
    config = ", ".join(f"{k}={v}" for k, v in generator.config.items())
    print(f"Wrote {args.target}: StyleGAN2 generator ({config}), num_ws={generator.num_ws}")
    return 0


if __name__ == "__main__":
    sys.exit(convert_main())
