"""`facelab-convert IN OUT [--format facelab|rosinality]`: rewrite a StyleGAN2 generator checkpoint.

IN may be an NVlabs .pkl (read without running any code from it), a rosinality .pt or a facelab file.
OUT is facelab's own format (loads with `torch.load(weights_only=True)`, no NVlabs code needed), or with
`--format rosinality` rosinality's `{"g_ema", "latent_avg"}` layout, which Barbershop's and other
rosinality-based code read as their `ffhq.pt`.

`--tuned-weights photo_weights.pt` writes the generator with a DragGAN photo job's PTI-tuned synthesis
weights (`items/<id>/pti/photo_weights.pt`, a flat vector over IN's synthesis parameters) in place of IN's
own, so the photo's tuned generator can be used on its own (another drag, another tool).
"""

from __future__ import annotations

import argparse
import io
import sys

import torch

from facelab.io.files import atomic_write_bytes
from facelab.nets.stylegan2_checkpoints import load_generator, nvlabs_to_rosinality, save_generator
from facelab.nets.tuned_weights import parameter_layout, unflatten


def apply_tuned_weights(generator: torch.nn.Module, path: str) -> None:
    """Load a flat PTI weight vector `[P]` from `path` into `generator.synthesis` (in place); a vector of
    another length (tuned from another generator) is an error naming the file."""
    flat = torch.load(path, map_location="cpu", weights_only=True)
    layout = parameter_layout(generator.synthesis)
    expected = sum(shape.numel() for _, shape in layout)
    if not isinstance(flat, torch.Tensor) or flat.ndim != 1 or flat.numel() != expected:
        shape = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
        raise ValueError(
            f"{path}: a flat vector of the synthesis network's {expected} weights expected, got {shape}; "
            "give the generator file the photo job tuned (its fit.module.generator_path)."
        )
    with torch.no_grad():
        for name, value in unflatten(flat.float(), layout).items():
            generator.synthesis.get_parameter(name).copy_(value)


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
    parser.add_argument("--tuned-weights", help="a DragGAN photo job's pti/photo_weights.pt to write in")
    args = parser.parse_args(argv)
    generator = load_generator(args.source)
    if args.tuned_weights:
        apply_tuned_weights(generator, args.tuned_weights)
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
