"""Face image sources with train / val / test splits: synthetic faces, CelebA, any folder of faces.

Each source is a small config object with `dataset(split)`; the datamodule asks it for the split it
needs. Items follow the data contract: `image` float `[3, H, W]` in [-1, 1] plus `meta`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from datamodules.synthetic_faces import SyntheticFaces
from facelab.io.images import CorruptImageError, center_crop_resize, list_images, read_rgb, to_tensor

SPLITS = ("train", "val", "test")
ON_CORRUPT = ("error", "skip")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")


class SyntheticFaceSource:
    """Procedural faces; each split draws from its own seed so validation faces are never trained on."""

    def __init__(
        self,
        size: int = 64,
        train_length: int = 4000,
        val_length: int = 64,
        test_length: int = 64,
        seed: int = 0,
    ):
        self.size = size
        self.lengths = {"train": train_length, "val": val_length, "test": test_length}
        self.seed = seed

    def dataset(self, split: str) -> Dataset:
        """The split's faces."""
        _check_split(split)
        return SyntheticFaces(
            size=self.size, length=self.lengths[split], seed=self.seed + SPLITS.index(split)
        )


class ImageFileFaces(Dataset):
    """A list of face image files, centre-cropped and resized; unreadable files raise or are skipped."""

    def __init__(self, files: list[Path], size: int, crop_size: int | None = None, on_corrupt: str = "error"):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(
                f"on_corrupt={on_corrupt!r} (config key data.faces.on_corrupt); use one of {ON_CORRUPT}."
            )
        self.files, self.size, self.crop_size, self.on_corrupt = files, size, crop_size, on_corrupt
        self._reported: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> np.ndarray:
        image = read_rgb(path)
        if self.crop_size is not None:
            image = _center_crop(image, self.crop_size)
        return center_crop_resize(image, self.size)

    def __getitem__(self, index: int) -> dict:
        # A corrupt file is replaced by the next readable one, so the epoch length stays fixed.
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                image = self._load(path)
            except CorruptImageError as error:
                if self.on_corrupt == "error":
                    raise
                if path not in self._reported:
                    self._reported.add(path)
                    warnings.warn(f"Skipping unreadable image {path}: {error.__cause__}", stacklevel=2)
                continue
            return {"image": to_tensor(image), "meta": {"index": index, "name": path.name}}
        raise CorruptImageError(
            f"No readable image among the {len(self.files)} files starting at {self.files[0]}."
        )


def _center_crop(image: np.ndarray, crop_size: int) -> np.ndarray:
    """The central `crop_size` square (or the largest that fits)."""
    height, width = image.shape[:2]
    side = min(crop_size, height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


class CelebASource:
    """CelebA in its official layout: `<root>/img_align_celeba/*.jpg` and `<root>/list_eval_partition.txt`
    (`000001.jpg 0` per line; 0 train, 1 val, 2 test). The usual preprocessing: the central 178x178 square
    of the 178x218 aligned image, resized to `size`."""

    PARTITION_FILE = "list_eval_partition.txt"
    IMAGE_DIR = "img_align_celeba"
    LAYOUT = "<root>/img_align_celeba/000001.jpg ... and <root>/list_eval_partition.txt"

    def __init__(
        self,
        root: str,
        size: int = 256,
        crop_size: int | None = 178,
        on_corrupt: str = "error",
        limit: int | None = None,
    ):
        self.root, self.size, self.crop_size = Path(root), size, crop_size
        self.on_corrupt, self.limit = on_corrupt, limit

    def _partition(self) -> dict[str, list[Path]]:
        partition_file = self.root / self.PARTITION_FILE
        image_dir = self.root / self.IMAGE_DIR
        for required in (self.root, image_dir, partition_file):
            if not required.exists():
                raise FileNotFoundError(
                    f"CelebA: {required} does not exist (config key data.faces.root={str(self.root)!r}). "
                    f"Expected the official layout: {self.LAYOUT}."
                )
        splits: dict[str, list[Path]] = {split: [] for split in SPLITS}
        for line_number, line in enumerate(partition_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{partition_file}:{line_number}: expected '<file> <0|1|2>', got {line!r}.")
            splits[SPLITS[int(parts[1])]].append(image_dir / parts[0])
        return splits

    def dataset(self, split: str) -> Dataset:
        """The official partition's split."""
        _check_split(split)
        files = self._partition()[split][: self.limit]
        return ImageFileFaces(files, self.size, self.crop_size, self.on_corrupt)


class FolderSource:
    """Any folder of face images (CelebA-HQ, FFHQ, ...), split by a seeded permutation of the sorted files."""

    def __init__(
        self,
        root: str,
        size: int = 256,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
        on_corrupt: str = "error",
        crop_size: int | None = None,
    ):
        self.root, self.size, self.seed = Path(root), size, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.on_corrupt, self.crop_size = on_corrupt, crop_size

    def dataset(self, split: str) -> Dataset:
        """The split's files (the same on every machine for the same seed)."""
        _check_split(split)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Face folder {self.root} does not exist (config key data.faces.root). Expected a folder of "
                "face images (.jpg/.png, searched recursively)."
            )
        files = list_images(self.root)
        if not files:
            raise FileNotFoundError(
                f"No images (.jpg, .png, ...) found under {self.root} (config key data.faces.root)."
            )
        order = np.random.default_rng(self.seed).permutation(len(files))
        n_val, n_test = round(len(files) * self.val_fraction), round(len(files) * self.test_fraction)
        bounds = {"val": (0, n_val), "test": (n_val, n_val + n_test), "train": (n_val + n_test, len(files))}
        start, stop = bounds[split]
        return ImageFileFaces(
            [files[i] for i in sorted(order[start:stop])], self.size, self.crop_size, self.on_corrupt
        )
