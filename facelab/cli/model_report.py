"""The figures that say whether a generator and a parser trained on the synthetic faces are good enough to
serve (issue 12, section 3), with the pictures:

- the parser's per-class IoU and mIoU on held-out synthetic faces (the test split: seed 2, never trained on);
- for the generator, the fraction of its samples in which the parser finds skin, both eyes, nose, mouth and
  hair (`facelab.metrics.face_parts`), next to the same fraction on real synthetic faces, by the parser
  and by their true label maps;
- `samples.png` (seeds 0-15, constant noise) and `samples_parsed.png` (the parser's labels blended in).

    python -m facelab.cli.model_report --generator G.pt --parser P.pth --out DIR [--count 256] [--psi 1.0]

Writes `DIR/model_report.json` and `DIR/model_report.md`; prints the markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from datamodules.face_render import CELEBAMASK_HQ_CLASSES
from datamodules.synthetic_faces import CLASS_COLOURS, SyntheticFaces
from facelab.io.files import atomic_write_bytes
from facelab.io.images import save_image, to_uint8
from facelab.metrics.face_parts import FACE_PARTS, found_fractions, parts_found
from facelab.metrics.segmentation import confusion_matrix, iou_per_class
from facelab.nets.bisenet import load_bisenet
from facelab.nets.bisenet import parse as parse_labels
from facelab.nets.stylegan2_checkpoints import load_generator
from lightning_modules.stylegan2_training import seed_latents

HELD_OUT_SEED = 2  # SyntheticFaceSource's test split of the training data's family (seed 0 + 2)
GRID_SEEDS = tuple(range(16))


def held_out_faces(size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` test-split synthetic faces at `size` px: images [N, 3, H, W] in [-1, 1], labels [N, H, W]."""
    faces = SyntheticFaces(size=size, length=count, seed=HELD_OUT_SEED)
    items = [faces[i] for i in range(count)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["parsing"] for it in items])


@torch.no_grad()
def parse_all(parser, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The parser's labels [N, H, W] of images [N, 3, H, W] in [-1, 1], in batches."""
    return torch.cat([parse_labels(parser, images[i : i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def generator_samples(generator, seeds, psi: float, batch: int = 32) -> torch.Tensor:
    """G's images [N, 3, H, W] in [-1, 1] of NVlabs-seeded z (constant noise, truncation `psi`)."""
    seeds = list(seeds)
    chunks = []
    for i in range(0, len(seeds), batch):
        z = seed_latents(seeds[i : i + batch], generator.z_dim)
        chunks.append(generator(z, truncation_psi=psi, noise_mode="const").clamp(-1, 1))
    return torch.cat(chunks)


def blended(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] with their labels' colours blended in (as the contact sheets)."""
    colours = torch.from_numpy(CLASS_COLOURS.astype(np.float32) / 127.5 - 1)[labels].permute(0, 3, 1, 2)
    return 0.35 * images + 0.65 * colours


def save_grid(images: torch.Tensor, path: Path) -> None:
    grid = make_grid(images, nrow=int(np.ceil(np.sqrt(len(images)))), padding=2, pad_value=1.0)
    save_image(to_uint8(grid), path)


def model_report(generator_path: Path, parser_path: Path, out: Path, count: int = 256, psi: float = 1.0,
                 min_pixels: int = 4) -> dict:
    """Compute the figures and write the report and the grids into `out`; returns the figures."""
    out.mkdir(parents=True, exist_ok=True)
    generator = load_generator(generator_path).eval()
    parser = load_bisenet(parser_path)
    size = generator.img_resolution

    images, truth = held_out_faces(size, count)
    predicted = parse_all(parser, images)
    ious = iou_per_class(confusion_matrix(predicted, truth, len(CELEBAMASK_HQ_CLASSES)))
    pairs = zip(CELEBAMASK_HQ_CLASSES, ious, strict=True)
    per_class = {name: round(float(iou), 4) for name, iou in pairs if not iou.isnan()}

    samples = generator_samples(generator, range(count), psi)
    sample_labels = parse_all(parser, samples)
    figures = {
        "generator": str(generator_path), "parser": str(parser_path), "size": size, "count": count,
        "psi": psi, "min_pixels": min_pixels, "held_out_seed": HELD_OUT_SEED,
        "parser_miou": round(float(ious.nanmean()), 4), "parser_iou": per_class,
        "parts_found": {
            "real faces, true labels": found_fractions(parts_found(truth, min_pixels)),
            "real faces, parser": found_fractions(parts_found(predicted, min_pixels)),
            "generator samples, parser": found_fractions(parts_found(sample_labels, min_pixels)),
        },
    }
    grid = list(GRID_SEEDS)
    save_grid(samples[grid], out / "samples.png")
    save_grid(blended(samples[grid], sample_labels[grid]), out / "samples_parsed.png")
    save_grid(blended(images[: len(grid)], predicted[: len(grid)]), out / "real_parsed.png")
    atomic_write_bytes(out / "model_report.json", json.dumps(figures, indent=2).encode())
    atomic_write_bytes(out / "model_report.md", report_markdown(figures).encode())
    return figures


def report_markdown(figures: dict) -> str:
    """The figures as two markdown tables: the parser's IoU, and the parts found."""
    lines = [f"Parser mIoU on {figures['count']} held-out synthetic faces at {figures['size']} px: "
             f"**{figures['parser_miou']:.3f}**", "",
             "| class | " + " | ".join(figures["parser_iou"]) + " |",
             "|---|" + "---|" * len(figures["parser_iou"]),
             "| IoU | " + " | ".join(f"{v:.2f}" for v in figures["parser_iou"].values()) + " |", "",
             "Fraction of images in which the parser finds each part "
             f"(at least {figures['min_pixels']} pixels; "
             f"generator: seeds 0-{figures['count'] - 1}, psi {figures['psi']}):", "",
             "| images | " + " | ".join([*FACE_PARTS, "all"]) + " |",
             "|---|" + "---|" * (len(FACE_PARTS) + 1)]
    for row, fractions in figures["parts_found"].items():
        lines.append(f"| {row} | " + " | ".join(f"{v:.2f}" for v in fractions.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", type=Path, required=True, help="a generator file load_generator reads")
    parser.add_argument("--parser", type=Path, required=True, help="a BiSeNet file load_bisenet reads")
    parser.add_argument("--out", type=Path, required=True, help="the folder for the report and the grids")
    parser.add_argument("--count", type=int, default=256, help="held-out faces and generator samples")
    parser.add_argument("--psi", type=float, default=1.0, help="truncation of the generator's samples")
    parser.add_argument("--min-pixels", type=int, default=4, help="pixels a part needs to count as found")
    args = parser.parse_args(argv)
    if args.count < len(GRID_SEEDS):
        parser.error(f"--count must be at least {len(GRID_SEEDS)} (the sample grid's seeds)")
    figures = model_report(args.generator, args.parser, args.out, args.count, args.psi, args.min_pixels)
    print(report_markdown(figures))
    return figures


if __name__ == "__main__":
    main()
