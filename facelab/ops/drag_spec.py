"""Check a DragGAN drag spec before any step runs: every problem is a DragSpecError naming the spec and field.

A spec is a mapping (one item of a YAML/JSON manifest, or the command line's values):

    generator: ffhq512.pkl          # NVlabs .pkl, rosinality .pt or facelab's own file
    handle_points: [[y, x], ...]    # pixels of the generated image, row then column
    target_points: [[y, x], ...]    # one per handle
    mask: editable.png              # optional, white = may change (facelab's 1 = hole convention)

Checks, in this order, all before a step: the fields are present and well formed, handles and targets are
equally many, the generator file reads as a StyleGAN2 with a 128x128 feature block, every point lies in the
image, and the mask (if any) has the image's size. Handles snap to integer pixels as the renderer's tracking
needs (it slices the feature map at them); targets stay as given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facelab.io.masks import read_mask
from facelab.nets.stylegan2 import Generator
from facelab.nets.stylegan2_checkpoints import load_generator
from facelab.ops.drag import FEATURE_RESOLUTION


class DragSpecError(ValueError):
    """A drag spec that cannot run; the message names the spec (file / item) and the field."""


@dataclass
class CheckedDrag:
    """A spec that passed every check, with its inputs as tensors."""

    source: str                        # the spec's name in messages, e.g. "drags.yaml item 3"
    generator: Generator
    handle_points: torch.Tensor        # [N, 2] long, [y, x]
    target_points: torch.Tensor        # [N, 2] float32, [y, x]
    editable_mask: torch.Tensor | None  # [1, h, h] float32, 1 = may change


def _fail(source: str, field: str, problem: str) -> DragSpecError:
    return DragSpecError(f"drag spec {source}, field '{field}': {problem}")


def _point_list(spec: Mapping, field: str, source: str) -> np.ndarray:
    """The field as an [N, 2] float array of finite numbers, N >= 1."""
    if field not in spec or spec[field] is None:
        raise _fail(source, field, "missing; give a list of [y, x] pixel pairs")
    try:
        points = np.asarray(spec[field], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise _fail(source, field, f"not a list of [y, x] number pairs ({error})") from error
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise _fail(source, field, f"must be a non-empty list of [y, x] pairs, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise _fail(source, field, "holds a non-finite number")
    return points


def _load_generator(spec: Mapping, source: str, base_dir: Path | None,
                    load: Callable[[Path], Generator]) -> Generator:
    if not spec.get("generator"):
        raise _fail(source, "generator", "missing; give the path of a StyleGAN2 checkpoint")
    path = Path(spec["generator"])
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        generator = load(path)
    except FileNotFoundError as error:
        raise _fail(source, "generator", f"file {path} not found ({error})") from error
    except Exception as error:  # any reader failure (CheckpointError, torch/zip/pickle errors) is a bad spec
        raise _fail(source, "generator", f"cannot read {path} as a StyleGAN2 generator: {error}") from error
    if not isinstance(generator, Generator):
        raise _fail(source, "generator", f"{path} is a {type(generator).__name__}, not a StyleGAN2 Generator")
    if FEATURE_RESOLUTION not in generator.synthesis.block_resolutions:
        raise _fail(source, "generator", f"{path} is a {generator.img_resolution} px StyleGAN2; DragGAN "
                    f"reads the {FEATURE_RESOLUTION}x{FEATURE_RESOLUTION} block's features, so it needs at "
                    f"least {FEATURE_RESOLUTION} px")
    return generator


def _check_inside(points: np.ndarray, field: str, source: str, image_size: int) -> None:
    outside = np.nonzero(((points < 0) | (points > image_size - 1)).any(axis=1))[0]
    if len(outside):
        index = int(outside[0])
        y, x = points[index].tolist()
        raise _fail(source, f"{field}[{index}]", f"point [y={y:g}, x={x:g}] lies outside the {image_size}x"
                    f"{image_size} image (rows and columns 0..{image_size - 1})")


def _read_editable_mask(spec: Mapping, source: str, base_dir: Path | None, image_size: int):
    value = spec.get("mask")
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        path = Path(value)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            mask = read_mask(path, white_is_hole=True, required_shape=(image_size, image_size),
                             shape_of=f"the generator's {image_size}x{image_size} image")
        except (OSError, ValueError) as error:  # missing, undecodable, not binary, wrong size
            raise _fail(source, "mask", str(error)) from error
        return torch.from_numpy(mask)[None]
    mask = torch.as_tensor(np.asarray(value, dtype=np.float32))
    mask = mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask
    if tuple(mask.shape) != (image_size, image_size):
        raise _fail(source, "mask", f"mask of shape {tuple(mask.shape)} for a {image_size}x{image_size} "
                    "image")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise _fail(source, "mask", "mask values must be 0 (fixed) or 1 (may change)")
    return mask[None]


def check_drag_spec(spec: Mapping, source: str, base_dir: str | Path | None = None,
                    load: Callable[[Path], Generator] = load_generator) -> CheckedDrag:
    """Check one spec and return its inputs; raise DragSpecError naming `source` and the field otherwise.

    Relative paths are read from `base_dir` (the manifest's folder). `load` reads a generator file: pass a
    caching loader to read each checkpoint once for many specs.
    """
    if not isinstance(spec, Mapping):
        raise DragSpecError(f"drag spec {source}: must be a mapping of fields, not a {type(spec).__name__}")
    base = None if base_dir is None else Path(base_dir)
    handles = _point_list(spec, "handle_points", source)
    targets = _point_list(spec, "target_points", source)
    if len(handles) != len(targets):
        raise _fail(source, "target_points", f"{len(targets)} targets for {len(handles)} handle points; give "
                    "one target per handle")
    generator = _load_generator(spec, source, base, load)
    image_size = generator.img_resolution
    _check_inside(handles, "handle_points", source, image_size)
    _check_inside(targets, "target_points", source, image_size)
    mask = _read_editable_mask(spec, source, base, image_size)
    return CheckedDrag(source, generator, torch.from_numpy(np.round(handles)).long(),
                       torch.from_numpy(targets).float(), mask)
