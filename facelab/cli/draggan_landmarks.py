"""The DragGAN paper's face-landmark benchmark (Pan et al. 2023, Table 1), run by
`facelab-eval experiment=draggan_landmarks landmarks.generator_path=<ffhq512.pkl>`.

For each seed pair (A, B) the generator makes the two faces from the official seed start (numpy
RandomState(seed), truncation 0.7); dlib finds the 68 iBUG landmarks on each; A's landmarks are dragged to
B's (1, 5 or 68 of them) by the DragGAN fit job (every drag of every setting is one item, fitted in batches);
then dlib looks again on each edited face. Reported per setting, in the paper's layout: the mean distance
(MD, pixels) from the landmarks to their targets before the edit ("No edit") and after it, the FID of the
edited faces against the initial ones (1-point setting, as the paper), and the time per drag. Faces where dlib
finds no landmarks (in A, in B, or after the edit) are counted in the table, not silently dropped.

The paper does not say which landmarks form its 1- and 5-point settings; here the 1 point is the nose tip
(iBUG index 30) and the 5 are dlib's 5-point set on the 68 (the outer and inner eye corners 36, 39, 42, 45
and the bottom of the nose, 33).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from facelab.io.images import read_rgb, save_image
from facelab.io.tables import markdown_text, write_tables
from facelab.nets.stylegan2_checkpoints import load_generator
from facelab.ops.drag import seed_start_ws
from facelab.ops.face_points import dlib_points

log = logging.getLogger("facelab")
ALL_68 = tuple(range(68))
POINT_SETS = {1: (30,), 5: (36, 39, 42, 45, 33), 68: ALL_68}  # iBUG 68 indices (0-based)


@torch.no_grad()
def render_seed(generator, seed: int) -> np.ndarray:
    ws = seed_start_ws(generator, seed)
    image = generator.synthesis(ws, noise_mode="const")[0]
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def build_manifest(settings: DictConfig, out: Path) -> tuple[list[dict], dict]:
    """The drags of every pair and setting, and the counts of faces dlib did not find."""
    generator = load_generator(settings.generator_path)
    size = generator.img_resolution
    drags, missing = [], {"source": 0, "target": 0}
    (out / "faces").mkdir(parents=True, exist_ok=True)
    for pair in range(settings.pairs):
        seed_a, seed_b = settings.first_seed + 2 * pair, settings.first_seed + 2 * pair + 1
        image_a, image_b = render_seed(generator, seed_a), render_seed(generator, seed_b)
        save_image(image_a, out / "faces" / f"{seed_a}.png")
        save_image(image_b, out / "faces" / f"{seed_b}.png")
        points_a, points_b = dlib_points(image_a, ALL_68), dlib_points(image_b, ALL_68)
        if points_a is None or points_b is None:
            missing["source" if points_a is None else "target"] += 1
            continue
        for count in settings.point_counts:
            chosen = list(POINT_SETS[count])
            handles = np.clip(np.round(points_a[chosen]), 0, size - 1)
            targets = np.clip(points_b[chosen], 0, size - 1)
            drags.append(
                {
                    "item_id": f"pair{pair}_{count}pt",
                    "seed": seed_a,
                    "handle_points": handles.tolist(),
                    "target_points": targets.tolist(),
                    "points": count,
                    "target_seed": seed_b,
                }
            )
    return drags, missing


def run_draggan_landmarks(cfg: DictConfig) -> list[dict]:
    """Build the drags, run them as a DragGAN fit job, measure and write `landmarks.md` / `.csv`."""
    settings = cfg.landmarks
    out = Path(cfg.paths.output_dir)
    drags, missing = build_manifest(settings, out)
    manifest = out / "drags.yaml"
    manifest.write_text(
        yaml.safe_dump(
            [{k: v for k, v in d.items() if k not in ("points", "target_seed")} for d in drags],
            default_flow_style=None,
        )
    )
    began = time.perf_counter()
    if drags:  # the drags are an ordinary DragGAN fit job (its own process: a Hydra app of its own)
        resolution = load_generator(settings.generator_path).img_resolution
        command = [
            sys.executable,
            "-m",
            "facelab.cli.fit",
            "experiment=draggan",
            f"manifest={manifest}",
            f"output_dir={out / 'drags'}",
            f"fit.image_size={resolution}",
            f"fit.module.generator_path={settings.generator_path}",
            f"hydra.run.dir={out / 'drags' / 'run'}",
            "extras.print_config=false",
            "progress=lines",
            *settings.fit_overrides,
        ]
        subprocess.run(command, check=True)
    rows = measure(drags, missing, out, settings, time.perf_counter() - began)
    write_tables(rows, out / "landmarks")
    header = {
        "generator": str(settings.generator_path),
        "pairs": settings.pairs,
        "first_seed": settings.first_seed,
        "drag settings": OmegaConf.to_container(settings.fit_overrides),
    }
    (out / "landmarks_settings.json").write_text(json.dumps(header, indent=1))
    print(f"{json.dumps(header)}\n{markdown_text(rows)}")
    return rows


def measure(drags: list[dict], missing: dict, out: Path, settings: DictConfig, seconds: float) -> list[dict]:
    """One row per point count: MD before / after (re-detected landmarks), FID (1 point), s per drag."""
    rows = []
    for count in settings.point_counts:
        mine = [d for d in drags if d["points"] == count]
        before, after, lost, initial, edited = [], [], 0, [], []
        for drag in mine:
            folder = out / "drags" / "items" / drag["item_id"] / "drag"
            targets = np.asarray(drag["target_points"])
            before.append(float(np.linalg.norm(np.asarray(drag["handle_points"]) - targets, axis=1).mean()))
            edited_image = read_rgb(folder / "image.png")
            found = dlib_points(edited_image, ALL_68)
            if found is None:
                lost += 1
            else:
                after.append(float(np.linalg.norm(found[list(POINT_SETS[count])] - targets, axis=1).mean()))
            initial.append(read_rgb(folder / "start_image.png"))
            edited.append(edited_image)
        row = {
            "points": count,
            "drags": len(mine),
            "no_face_source": missing["source"],
            "no_face_target": missing["target"],
            "no_face_after_edit": lost,
            "md_no_edit": float(np.mean(before)) if before else float("nan"),
            "md_draggan": float(np.mean(after)) if after else float("nan"),
            "seconds_per_drag": seconds / max(len(drags), 1),
        }
        if settings.fid and count == min(settings.point_counts) and len(mine) > 1:
            row["fid"] = fid(edited, initial)
        rows.append(row)
    return rows


def fid(edited: list[np.ndarray], initial: list[np.ndarray]) -> float:
    """FID of the edited faces against the initial ones (the metrics suite's FID: Inception pool3, scipy)."""
    from facelab.metrics.reconstruction import reconstruction_metrics

    suite = reconstruction_metrics(("fid",))
    to_unit = lambda images: torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    suite.update(to_unit(edited), to_unit(initial))
    return float(suite.compute()[0]["fid"])
