"""Inpainting image files with a trained model: one image or a folder, pixels outside the hole untouched.

The model is anything with `inpaint(image [B,3,H,W], mask [B,1,H,W]) -> {"pred": ...}` (the Lightning
module does), so this file stays free of Lightning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facelab.io.images import (
    IMAGE_EXTENSIONS,
    list_images,
    read_rgb,
    save_image,
    to_tensor,
    to_uint8,
)
from facelab.io.masks import read_mask

log = logging.getLogger(__name__)
SIZE_MULTIPLE = 8  # two stride-2 downsamplings and 8-px HOG cells


def pair_files(image: Path, mask: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs: one image and one mask, a folder with one mask, or two folders matched by stem."""
    for path, key in ((image, "image"), (mask, "mask")):
        if not path.exists():
            raise FileNotFoundError(f"{key}={str(path)!r} does not exist.")
    # A mask folder inside the image folder holds masks, not images to inpaint.
    images = [
        path for path in list_images(image) if mask.is_file() or mask.resolve() not in path.resolve().parents
    ]
    if not images:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in image={str(image)!r}.")
    if mask.is_file():
        return [(path, mask) for path in images]
    masks = {path.stem: path for path in list_images(mask)}
    missing = [path.name for path in images if path.stem not in masks]
    if missing:
        raise FileNotFoundError(
            f"No mask in mask={str(mask)!r} for {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            "masks must share the image's file name (any image extension)."
        )
    return [(path, masks[path.stem]) for path in images]


def _network_input(image: np.ndarray, hole: np.ndarray, size: int | None):
    """Tensors for the network: resized to `size`, or padded (reflect) up to a multiple of 8."""
    image_t = to_tensor(image).unsqueeze(0)  # [1, 3, H, W]
    mask_t = torch.from_numpy(hole).float()[None, None]  # [1, 1, H, W]
    height, width = hole.shape
    if size is not None:
        image_t = F.interpolate(image_t, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
        mask_t = (
            F.interpolate(mask_t, size=(size, size), mode="area") > 0
        ).float()  # any hole pixel stays hole
        return image_t, mask_t
    pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
    if pad_h or pad_w:
        image_t = F.pad(image_t, (0, pad_w, 0, pad_h), mode="reflect")
        mask_t = F.pad(mask_t, (0, pad_w, 0, pad_h), mode="constant", value=0.0)
    return image_t, mask_t


@torch.no_grad()
def inpaint_array(
    model, image: np.ndarray, hole: np.ndarray, size: int | None = None, device: str | torch.device = "cpu"
) -> np.ndarray:
    """`[H, W, 3]` uint8 and `[H, W]` bool -> `[H, W, 3]` uint8 with only the hole's pixels replaced."""
    height, width = hole.shape
    image_t, mask_t = _network_input(image, hole, size)
    pred = model.inpaint(image_t.to(device), mask_t.to(device))["pred"].float().cpu()
    if size is not None:
        pred = F.interpolate(pred, size=(height, width), mode="bicubic", align_corners=False)
    pred = to_uint8(pred[0, :, :height, :width])
    return np.where(hole[..., None], pred, image)


def warn_if_mask_is_uniform(hole: np.ndarray, mask_path: Path, white_is_hole: bool) -> None:
    """A mask that is all hole or all known is almost always the other polarity (or the wrong file)."""
    if hole.any() and not hole.all():
        return
    colour = "black" if hole.any() != white_is_hole else "white"
    flipped = str(not white_is_hole).lower()
    effect = (
        "no pixel is a hole, so the output is the input unchanged"
        if not hole.any()
        else "every pixel is a hole, so nothing of the image is kept and the output is made up"
    )
    log.warning(
        "mask %s is all %s: with mask_white_is_hole=%s %s. If your masks mark the hole in the other colour "
        "(inverted polarity), rerun with mask_white_is_hole=%s.",
        mask_path, colour, str(white_is_hole).lower(), effect, flipped,
    )


def inpaint_files(
    model,
    image: str | Path,
    mask: str | Path,
    out: str | Path,
    size: int | None = None,
    device: str = "cpu",
    white_is_hole: bool = True,
) -> list[Path]:
    """Inpaint one image file or a folder; returns the written paths (each written atomically)."""
    image, mask, out = Path(image), Path(mask), Path(out)
    pairs = pair_files(image, mask)
    single = image.is_file()
    written = []
    for image_path, mask_path in pairs:
        pixels = read_rgb(image_path)
        # read_mask checks that the file is a binary mask of the image's size (1 = hole, cut at half grey).
        shape = pixels.shape[:2]
        hole = read_mask(mask_path, white_is_hole, required_shape=shape, shape_of=f"image {image_path}") > 0.5
        warn_if_mask_is_uniform(hole, mask_path, white_is_hole)
        result = inpaint_array(model, pixels, hole, size, device)
        target = out if single and out.suffix.lower() in IMAGE_EXTENSIONS else out / f"{image_path.stem}.png"
        save_image(result, target)
        written.append(target)
        log.info("inpainted %s (hole %.1f%%) -> %s", image_path, 100 * hole.mean(), target)
    return written


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
