"""Image files: reading with clear errors, writing atomically, tensor <-> file conversion; masks: masks.py."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from facelab.io.files import atomic_write_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded."""


def list_images(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """All image files under `root` (recursive), sorted so that every machine sees the same order."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"Image folder {root} does not exist.")
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())


def decode_image(
    path: str | Path, mode: str, what: str = "image", fix: str = "Replace or delete the file."
) -> np.ndarray:
    """Decode an image file to a uint8 array in PIL `mode` ("RGB", "L", ...). A missing file raises
    FileNotFoundError and an undecodable one CorruptImageError; both messages name the file as `what`
    ("image", "mask image") and the undecodable one ends with `fix`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what.capitalize()} {path} does not exist.")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated files only fail on load
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CorruptImageError(f"Cannot decode {what} {path} ({error}). {fix}") from error


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to `[H, W, 3]` uint8 RGB; a corrupt file raises CorruptImageError naming it."""
    fix = (
        "Replace or delete the file, or set `on_corrupt: skip` in the data config to skip unreadable "
        "files with a warning."
    )
    return decode_image(path, "RGB", fix=fix)


def center_crop_resize(image: np.ndarray, size: int, resample=Image.BICUBIC) -> np.ndarray:
    """Crop the central square of `[H, W, C]` (or `[H, W]`) and resize it to `size` x `size`."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(image[top : top + side, left : left + side])
    if side != size:
        square = square.resize((size, size), resample)
    return np.asarray(square)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """`[H, W, 3]` uint8 -> `[3, H, W]` float32 in [-1, 1] (the data contract)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """`[3, H, W]` or `[1, H, W]` float in [-1, 1] -> `[H, W, 3]` / `[H, W]` uint8."""
    array = image.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().cpu().numpy()
    array = array.transpose(1, 2, 0)
    return array[..., 0] if array.shape[2] == 1 else array


def save_image(array: np.ndarray, path: str | Path) -> None:
    """Save a uint8 `[H, W]` / `[H, W, 3]` array atomically; the format follows the suffix."""
    path = Path(path)
    buffer = io.BytesIO()
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    Image.fromarray(array).save(buffer, format=image_format)
    atomic_write_bytes(path, buffer.getvalue())
