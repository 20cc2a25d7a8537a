"""`make demo`: a Barbershop hair transfer between synthetic faces and a DragGAN landmark drag on the shipped
128 px models, in minutes on a CPU, with the figures that say whether they worked.

    python -m facelab.cli.demo [--out outputs/demo] [--quick] [--vgg-weights vgg16-397923af.pth]
        [--generator models/synthetic128/generator.pt] [--parser models/synthetic128/parser.pth]
        [--barbershop KEY=VALUE ...] [--draggan KEY=VALUE ...]

The two jobs are ordinary latent-fit jobs (conf/experiment/demo_barbershop.yaml, demo_draggan.yaml; any
`--barbershop` / `--draggan` argument is a Hydra override of one of them). Written under `--out`:

    barbershop/inputs/   identity.png, shape.png (appearance.png), manifest.yaml, faces.json
    barbershop/job/      the fit job: items/transfer/<stage>/ (every intermediate), stages/, done/
    barbershop/          result.png, overview.png, regions.png
    draggan/             manifest.yaml, start.json, job/ (the fit job), before_after.png, trajectory.gif/.mp4
    figures.json, figures.md

No ImageNet VGG16 on the machine (and none given): Barbershop's VGG losses and the LPIPS figure use a
fixed-seed random VGG16 written to `<out>/weights/` (facelab/nets/random_vgg.py says why that is a usable
perceptual space); figures.json names the trunk used.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from facelab.cli.common import CONFIG_DIR, compose_fit_config
from facelab.fit.cache import file_digest
from facelab.fit.job import run_fit
from facelab.io.images import read_rgb, save_image, to_tensor, to_uint8
from facelab.metrics.edit_figures import mask_iou, masked_lpips_distance, masked_psnr, point_distances
from facelab.metrics.perceptual import PerceptualDistance
from facelab.nets.bisenet import load_bisenet
from facelab.nets.bisenet import parse as parse_labels
from facelab.nets.random_vgg import RANDOM_VGG16_SEED, write_random_vgg16
from facelab.nets.stylegan2_checkpoints import load_generator
from facelab.nets.vgg import default_vgg16_weights_path
from facelab.ops.drag import seed_start_ws
from facelab.ops.face_points import dlib_points, parsed_mouth_corners
from facelab.ops.resample import downsample_to

log = logging.getLogger("facelab")
REPO = Path(CONFIG_DIR).parent
# The shipped pair (generator.pt, parser.pth). DragGAN needs a generator of at least 128 px.
SHIPPED_MODELS = REPO / "models" / "synthetic128"
TRANSFER, DRAG = "transfer", "drag"  # the item ids of the two jobs
ROLES = ("identity", "shape", "appearance")


# Set-up -------------------------------------------------------------------------------------------------
def compose_job(experiment: str, job_dir: Path, overrides: list[str]) -> DictConfig:
    """The fit config of `experiment=<experiment>` writing into `job_dir`, as facelab-fit composes it."""
    return compose_fit_config(job_dir, [f"experiment={experiment}", f"output_dir={job_dir}", *overrides])


def perceptual_trunk(vgg_weights: str | None, out: Path) -> tuple[Path, str]:
    """(the VGG16 file for the losses and the LPIPS figure, what it is): the given file, else torchvision's
    ImageNet file in the torch cache, else the fixed-seed random trunk written under `out/weights/`."""
    if vgg_weights:
        path = Path(vgg_weights).expanduser().resolve()
        if not path.is_file():
            raise SystemExit(f"--vgg-weights {path}: no such file (torchvision's vgg16-397923af.pth).")
        return path, f"VGG16, ImageNet weights from {path}"
    cached = default_vgg16_weights_path()
    if cached.is_file():
        return cached, f"VGG16, ImageNet weights from the torch cache ({cached})"
    path = write_random_vgg16(out / "weights" / f"vgg16_random_seed{RANDOM_VGG16_SEED}.pth")
    log.warning(
        "No ImageNet VGG16 (%s, or --vgg-weights): Barbershop's LPIPS / style / blend losses and the LPIPS "
        "figure use a fixed-seed random VGG16 (%s). Its distances are not comparable to published LPIPS.",
        cached,
        path,
    )
    return (
        path,
        f"VGG16, random He-normal weights (seed {RANDOM_VGG16_SEED}; no ImageNet file on this machine)",
    )


def model_files(args: argparse.Namespace) -> dict[str, Path]:
    """The generator and parser: --generator / --parser, else those in --models, else the shipped pair."""
    folder = args.models or SHIPPED_MODELS
    files = {
        "generator": Path(args.generator or Path(folder) / "generator.pt").expanduser().resolve(),
        "parser": Path(args.parser or Path(folder) / "parser.pth").expanduser().resolve(),
    }
    for what, path in files.items():
        if not path.is_file():
            raise SystemExit(
                f"The demo's {what} {path} is not there. It runs on the small models committed under "
                f"models/ (README, 'Training a StyleGAN2 and a face parser'); give another folder with "
                f"--models, or files with --generator / --parser."
            )
    return files


def parse(parser, images: torch.Tensor, size: int) -> torch.Tensor:
    """Parser labels `[B, size, size]` of `[B, 3, H, W]` images in [-1, 1], as Barbershop's parse stage."""
    return parse_labels(parser, downsample_to(images, size).clamp(-1, 1))


def resized_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A bool `[H, W]` mask at `size` x `size` (nearest)."""
    return F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].bool()


# Barbershop ---------------------------------------------------------------------------------------------
def face_matches(attributes: dict, rule: DictConfig) -> bool:
    """A synthetic face fits a role: hair style and colour among the rule's, upright, no hat or glasses."""
    if (
        attributes["hat"]
        or attributes["glasses"]
        or abs(attributes["roll_degrees"]) > rule.get("max_roll", 90)
    ):
        return False
    styles, colours = rule.get("hair_style"), rule.get("hair_colour")
    return (not styles or attributes["hair_style"] in styles) and (
        not colours or attributes["hair_colour"] in colours
    )


def choose_faces(demo: DictConfig) -> dict[str, tuple[int, object]]:
    """role -> (index, FaceSample): the first face of the family that fits each role's rule, no face twice."""
    render = instantiate(demo.faces)
    chosen, used = {}, set()
    for role in ROLES:
        rule = demo.roles.get(role)
        if rule is None:
            continue
        for index in range(demo.search):
            if index in used:
                continue
            sample = render(index=index)
            if face_matches(sample.attributes, rule):
                chosen[role] = (index, sample)
                used.add(index)
                break
        else:
            raise SystemExit(
                f"No synthetic face among the first {demo.search} fits demo.roles.{role}: {dict(rule)}."
            )
    return chosen


def run_barbershop(out: Path, models: dict, quick: bool, overrides: list[str]) -> dict:
    """Render the inputs, run the transfer job; returns what the figures need."""
    folder, job = out / "barbershop", out / "barbershop" / "job"
    shutil.rmtree(job, ignore_errors=True)  # a fresh transfer; embeddings come back from the cache
    resolution = load_generator(models["generator"]).img_resolution
    base = [
        f"fit.image_size={resolution}",
        f"fit.module.parse_size={resolution}",  # the shipped parser is trained on faces of this size
        f"fit.module.perceptual_size={min(64, resolution)}",
        f"fit.module.generator_path={models['generator']}",
        f"fit.module.parser_path={models['parser']}",
        f"fit.module.lpips_trunk_path={models['trunk']}",
        f"fit.module.vgg_weights_path={models['trunk']}",
        f"fit.module.pca_cache_dir={out / 'cache' / 'pca'}",
        f"cache_dir={out / 'cache' / 'fit'}",
        f"manifest={folder / 'inputs' / 'manifest.yaml'}",
    ]
    cfg = compose_job("demo_barbershop", job, [*base, *overrides])
    if quick:
        stages = cfg.fit.module.stages
        steps = [f"fit.module.stages.{k}.steps={cfg.demo.quick_steps}" for k, v in stages.items() if v.steps]
        cfg = compose_job("demo_barbershop", job, [*base, *steps, "fit.module.pca_samples=2000", *overrides])
    chosen = choose_faces(cfg.demo)
    row, faces = {"item_id": TRANSFER}, {}
    for role, (index, sample) in chosen.items():
        save_image(sample.image, folder / "inputs" / f"{role}.png")
        row[role] = f"{role}.png"
        faces[role] = {"seed": int(cfg.demo.faces.seed), "index": index, **sample.attributes}
    (folder / "inputs" / "manifest.yaml").write_text(yaml.safe_dump([row], sort_keys=False))
    (folder / "inputs" / "faces.json").write_text(json.dumps(faces, indent=1))
    started = time.perf_counter()
    run_fit(cfg)
    seconds = time.perf_counter() - started
    items = job / "items" / TRANSFER
    shutil.copyfile(items / "blend" / "result.png", folder / "result.png")
    return {"cfg": cfg, "items": items, "inputs": folder / "inputs", "faces": faces, "seconds": seconds}


def barbershop_figures(run: dict, parser, lpips: PerceptualDistance, folder: Path) -> dict:
    """Hair IoU (result and identity against the target hair mask) and the face region's LPIPS / PSNR to the
    identity (result and the identity's FS reconstruction), with the region sizes they were measured on."""
    cfg, items = run["cfg"], run["items"]
    module = cfg.fit.module
    hair_classes, face_classes = list(module.labels.transfer), list(cfg.demo.face_classes)
    load = lambda path: to_tensor(np.array(read_rgb(path)))  # noqa: E731  [3, H, W] in [-1, 1], writable
    identity, result = load(run["inputs"] / "identity.png"), load(items / "blend" / "result.png")
    reconstruction = load(items / "embed_fs" / "identity_image.png")
    size = identity.shape[-1]
    target = torch.load(items / "mask_fill_2" / "target_shape.pt", weights_only=True).reshape(
        module.parse_size, module.parse_size
    )
    labels = parse(parser, torch.stack([identity, result]), module.parse_size)
    target_hair = torch.isin(target, torch.tensor(hair_classes))
    identity_hair, result_hair = (torch.isin(labels[k], torch.tensor(hair_classes)) for k in (0, 1))
    face = torch.isin(labels[0], torch.tensor(face_classes)) & ~result_hair
    face_full = resized_mask(face, size)
    save_regions(target_hair, result_hair, face, folder / "regions.png", size)
    save_overview(run, folder / "overview.png", size)
    figures = {
        "hair_iou_result": mask_iou(result_hair, target_hair),
        "hair_iou_identity": mask_iou(identity_hair, target_hair),
        "face_lpips_result": masked_lpips_distance(lpips, result, identity, face_full),
        "face_lpips_reconstruction": masked_lpips_distance(lpips, reconstruction, identity, face_full),
        "face_psnr_result": masked_psnr(result, identity, face_full),
        "face_psnr_reconstruction": masked_psnr(reconstruction, identity, face_full),
        "pixels": {
            "target_hair": int(target_hair.sum()),
            "result_hair": int(result_hair.sum()),
            "identity_hair": int(identity_hair.sum()),
            "face": int(face.sum()),
            "of": module.parse_size**2,
        },
    }
    notes = []
    if not target_hair.any():
        notes.append("the target mask holds no hair: the parser found none in the shape reference")
    if not face.any():
        notes.append("the parser found no face parts in the identity: the face figures are undefined")
    return figures | {"notes": notes}


def save_regions(target_hair, result_hair, face, path: Path, size: int) -> None:
    """red: the target hair mask, green: the result's hair by the parser (yellow where both), blue: the face
    region the LPIPS / PSNR figures are measured in."""
    channels = [resized_mask(mask, size).numpy() for mask in (target_hair, result_hair, face)]
    save_image((np.stack(channels, axis=-1) * 255).astype(np.uint8), path)


def save_overview(run: dict, path: Path, size: int) -> None:
    """One row: the inputs, the identity's FS reconstruction, the target mask, the aligned image and the
    result."""
    items, names = run["items"], [run["inputs"] / f"{role}.png" for role in run["faces"]]
    names += [
        items / "embed_fs" / "identity_image.png",
        items / "mask_fill_2" / "target_shape_view.png",
        items / "align_reference" / "aligned_shape.png",
        items / "blend" / "result.png",
    ]
    tiles = [np.asarray(Image.open(n).convert("RGB").resize((size, size), Image.NEAREST)) for n in names]
    save_image(np.concatenate(tiles, axis=1), path)


# DragGAN ------------------------------------------------------------------------------------------------
def choose_drag(demo: DictConfig, generator, parser, parse_size: int) -> dict:
    """The start seed and the handles: dlib's landmarks on the first seed where it finds a face; else the
    parser's mouth corners on the first seed; else the synthetic faces' average corners."""
    size = generator.img_resolution
    images = {}
    for seed in demo.seeds:
        with torch.no_grad():
            images[seed] = generator.synthesis(seed_start_ws(generator, int(seed)), noise_mode="const")[0]
        points = dlib_points(to_uint8(images[seed]), list(demo.landmarks))
        if points is not None:
            return {"seed": int(seed), "source": "dlib 68 landmarks", "handles": points}
    first = int(demo.seeds[0])
    labels = parse(parser, images[first][None], parse_size)[0].numpy()
    corners = parsed_mouth_corners(labels, list(demo.mouth_classes))
    if corners is not None:
        source = f"parser mouth corners (dlib found no face in seeds {list(demo.seeds)})"
        return {"seed": first, "source": source, "handles": corners * size / parse_size}
    source = "average synthetic-face mouth corners (neither dlib nor the parser found a face)"
    return {
        "seed": first,
        "source": source,
        "handles": np.asarray(demo.fallback_points, dtype=np.float64) * size,
    }


def run_draggan(out: Path, models: dict, parser, quick: bool, overrides: list[str]) -> dict:
    folder, job = out / "draggan", out / "draggan" / "job"
    shutil.rmtree(job, ignore_errors=True)
    generator = load_generator(models["generator"])
    size = generator.img_resolution
    base = [
        f"fit.image_size={size}",
        f"fit.module.generator_path={models['generator']}",
        f"manifest={folder / 'manifest.yaml'}",
    ]
    cfg = compose_job("demo_draggan", job, [*base, *overrides])
    if quick:
        cfg = compose_job(
            "demo_draggan", job, [*base, f"fit.module.stages.drag.steps={cfg.demo.quick_steps}", *overrides]
        )
    start = choose_drag(cfg.demo, generator, parser, size)
    handles = np.clip(np.round(start["handles"]), 0, size - 1).astype(int)
    targets = np.clip(handles + np.asarray(cfg.demo.offsets, dtype=int), 0, size - 1)
    spec = {
        "item_id": DRAG,
        "seed": start["seed"],
        "handle_points": handles.tolist(),
        "target_points": targets.tolist(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.yaml").write_text(yaml.safe_dump([spec], default_flow_style=None, sort_keys=False))
    start_record = {
        "seed": start["seed"],
        "source": start["source"],
        "landmarks": list(cfg.demo.landmarks),
        "found_points": start["handles"].tolist(),
        **spec,
    }
    (folder / "start.json").write_text(json.dumps(start_record, indent=1))
    started = time.perf_counter()
    run_fit(cfg)
    seconds = time.perf_counter() - started
    results = job / "items" / DRAG / "drag"
    for name in ("before_after.png", "trajectory.gif", "trajectory.mp4", "image.png"):
        if (results / name).is_file():
            shutil.copyfile(results / name, folder / name)
    return {"cfg": cfg, "results": results, "start": start_record, "seconds": seconds}


def draggan_figures(run: dict) -> dict:
    """Handle-target distances before and after: by DragGAN's own point tracking, and (when the handles came
    from dlib) by dlib run again on the edited image."""
    record = json.loads((run["results"] / "drag.json").read_text())
    start, steps_cap = run["start"], int(run["cfg"].fit.module.stages.drag.steps)
    figures = {
        "seed": start["seed"],
        "landmark_source": start["source"],
        "handles": start["handle_points"],
        "targets": start["target_points"],
        "distance_before": record["distance_start"],
        "distance_after_tracked": record["distance_final"],
        "distance_after_redetected": None,
        "steps": record["steps"],
        "step_cap": steps_cap,
        "reached": record["steps"] < steps_cap,
        "notes": [],
    }
    if start["source"].startswith("dlib"):
        edited = read_rgb(run["results"] / "image.png")
        found = dlib_points(edited, start["landmarks"])
        if found is None:
            figures["notes"].append("dlib found no face in the edited image")
        else:
            figures["distance_after_redetected"] = point_distances(found, start["target_points"])
    for key in ("distance_before", "distance_after_tracked", "distance_after_redetected"):
        values = figures[key]
        figures[f"mean_{key}"] = None if values is None else float(np.mean(values))
    return figures


# Figures ------------------------------------------------------------------------------------------------
def number(value, digits: int = 3, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def figures_markdown(figures: dict) -> str:
    bb, dg, models = figures["barbershop"], figures["draggan"], figures["models"]
    rows = [
        (
            "Hair IoU, result vs target hair mask (parser)",
            number(bb["hair_iou_result"]),
            number(bb["hair_iou_identity"]),
            "1 = the new hair is exactly where the target mask puts it",
        ),
        (
            "Face-region LPIPS to the identity",
            number(bb["face_lpips_result"]),
            number(bb["face_lpips_reconstruction"]),
            "0 = the face unchanged; baseline: the identity's FS embedding",
        ),
        (
            "Face-region PSNR to the identity (dB)",
            number(bb["face_psnr_result"], 2),
            number(bb["face_psnr_reconstruction"], 2),
            "higher = closer; baseline: the identity's FS embedding",
        ),
        (
            "Drag: mean handle-target distance (px), tracked",
            number(dg["mean_distance_after_tracked"], 2),
            number(dg["mean_distance_before"], 2),
            "after / before the drag, by DragGAN's point tracking",
        ),
        (
            "Drag: mean handle-target distance (px), dlib again",
            number(dg["mean_distance_after_redetected"], 2),
            number(dg["mean_distance_before"], 2),
            "after / before, dlib's landmarks found on the edited face",
        ),
    ]
    lines = [
        "# make demo: figures",
        "",
        "| figure | value | baseline / before | reading |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        "Baselines: the hair IoU of the identity's own hair against the target, the face figures of the",
        "identity's FS reconstruction, the drag's distance before it started.",
        "",
        f"- generator: `{models['generator']}`; parser: `{models['parser']}`",
        f"- perceptual network (losses and LPIPS): {models['perceptual_trunk']}",
        f"- Barbershop: {bb['seconds']:.0f} s; steps "
        + ", ".join(f"{stage} {steps}" for stage, steps in bb["steps"].items() if steps)
        + "; inputs "
        + ", ".join(f"{role}: {face}" for role, face in bb["inputs"].items()),
        f"- DragGAN: {dg['seconds']:.0f} s, seed {dg['seed']}, handles from {dg['landmark_source']}, "
        f"{dg['steps']} steps (cap {dg['step_cap']}, targets {'' if dg['reached'] else 'not '}reached)",
        *[f"- note: {note}" for note in [*bb["notes"], *dg["notes"]]],
    ]
    if figures["quick"]:
        lines.append("- `--quick`: a few steps per stage, a test of the plumbing; the figures mean nothing")
    return "\n".join(lines) + "\n"


def run_demo(args: argparse.Namespace) -> dict:
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    trunk, trunk_text = perceptual_trunk(args.vgg_weights, out)
    models = model_files(args) | {"trunk": trunk}
    parser = load_bisenet(models["parser"])
    log.info("demo 1/2: Barbershop hair transfer -> %s", out / "barbershop")
    barbershop = run_barbershop(out, models, args.quick, args.barbershop)
    lpips = PerceptualDistance("vgg", weights_path=trunk)
    bb = barbershop_figures(barbershop, parser, lpips, out / "barbershop")
    stages = barbershop["cfg"].fit.module.stages
    bb |= {
        "seconds": barbershop["seconds"],
        "steps": {k: int(v.steps) for k, v in stages.items()},
        "inputs": {
            role: f"face {f['index']} ({f['hair_style']}, {f['hair_colour']})"
            for role, f in barbershop["faces"].items()
        },
    }
    log.info("demo 2/2: DragGAN landmark drag -> %s", out / "draggan")
    draggan = run_draggan(out, models, parser, args.quick, args.draggan)
    dg = draggan_figures(draggan) | {"seconds": draggan["seconds"]}
    figures = {
        "models": {
            "generator": str(models["generator"]),
            "generator_sha256": file_digest(models["generator"]),
            "parser": str(models["parser"]),
            "perceptual_trunk": trunk_text,
        },
        "quick": bool(args.quick),
        "barbershop": bb,
        "draggan": dg,
        "seconds": time.perf_counter() - began,
    }
    markdown = figures_markdown(figures)
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    (out / "figures.md").write_text(markdown)
    log.info("demo done in %.0f s: %s\n%s", figures["seconds"], out / "figures.md", markdown)
    return figures


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m facelab.cli.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    parser.add_argument(
        "--models",
        default=None,
        help="a folder with generator.pt and parser.pth (default: models/synthetic128)",
    )
    parser.add_argument("--generator", default=None, help="a StyleGAN2 file (load_generator reads it)")
    parser.add_argument(
        "--parser", default=None, help="a 19-class BiSeNet state dict (load_bisenet reads it)"
    )
    parser.add_argument(
        "--vgg-weights",
        default=None,
        help="torchvision's vgg16-397923af.pth (default: the torch cache, else a random VGG16)",
    )
    parser.add_argument("--quick", action="store_true", help="a few steps per stage (a test of the plumbing)")
    parser.add_argument(
        "--barbershop",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override of the transfer job (conf/experiment/demo_barbershop.yaml)",
    )
    parser.add_argument(
        "--draggan",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override of the drag job (conf/experiment/demo_draggan.yaml)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return run_demo(parse_arguments(argv))


if __name__ == "__main__":
    main()
