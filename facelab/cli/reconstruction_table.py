"""The Barbershop paper's reconstruction table from a `facelab-fit experiment=barbershop_reconstruction` job:

    python -m facelab.cli.reconstruction_table <job output_dir> [--metrics rmse psnr ssim vgg lpips_alex fid]

For every recorded item it compares the W+ and the FS reconstructions (`embed_w/image_image.png`,
`embed_fs/image_image.png`) with the input image they embed, with facelab's metric suite (equal to
skimage / lpips / a scipy FID, facelab/metrics), and writes `reconstruction.md` and `.csv` beside the job:
one row per embedding, in the paper's column order (RMSE, PSNR, SSIM, VGG, LPIPS, FID).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from facelab.fit.records import FitRecords
from facelab.io.images import read_rgb, to_tensor
from facelab.io.tables import markdown_text, write_tables
from facelab.metrics.reconstruction import RECONSTRUCTION_METRICS, reconstruction_metrics

EMBEDDINGS = {"embed_w": "W+ embedding (II2S, the paper's Baseline row)", "embed_fs": "FS embedding (Ours)"}


def as_unit(path: str | Path) -> torch.Tensor:
    return (to_tensor(read_rgb(path).copy()) + 1) / 2  # [3, H, W] in [0, 1]


def reconstruction_rows(
    output_dir: str | Path, metrics=RECONSTRUCTION_METRICS, batch_size: int = 16
) -> list[dict]:
    records = FitRecords(output_dir)
    item_ids = sorted(records.done_ids())
    if not item_ids:
        raise FileNotFoundError(f"No finished items under {output_dir}: run the reconstruction job first.")
    rows = []
    for stage, label in EMBEDDINGS.items():
        suite = reconstruction_metrics(metrics)
        for start in range(0, len(item_ids), batch_size):
            pairs = []
            for item_id in item_ids[start : start + batch_size]:
                record = json.loads(records.stage_record_path(item_id, stage).read_text())
                original = as_unit(record["inputs"]["image"])
                rebuilt = as_unit(records.stage_dir(item_id, stage) / "image_image.png")
                if rebuilt.shape != original.shape:
                    raise ValueError(
                        f"{item_id}: reconstruction {tuple(rebuilt.shape)} vs input {tuple(original.shape)}"
                    )
                pairs.append((rebuilt, original))
            suite.update(torch.stack([p for p, _ in pairs]), torch.stack([o for _, o in pairs]))
        row = suite.compute()[0]
        rows.append({"embedding": label, "images": row["count"], **{m: row[m] for m in suite.metrics}})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output_dir")
    parser.add_argument("--metrics", nargs="+", default=list(RECONSTRUCTION_METRICS))
    args = parser.parse_args(argv)
    rows = reconstruction_rows(args.output_dir, tuple(args.metrics))
    write_tables(rows, Path(args.output_dir) / "reconstruction")
    print(markdown_text(rows))


if __name__ == "__main__":
    main()
