"""Hole-mask datasets (items are float32 `[1, H, W]` tensors, 1 = hole).

- `ProceduralMasks`: DeepFill/LaMa-style masks drawn on the fly (`facelab.ops.masks.procedural_mask`).
- `MaskFolder`: mask images from disk, such as the NVIDIA irregular mask set, bucketed by hole ratio.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from facelab.io.files import atomic_write_bytes, user_cache_dir
from facelab.io.masks import read_mask
from facelab.ops.masks import bucket_from_name, bucket_index, bucket_name, procedural_mask

MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


class ProceduralMasks(Dataset):
    """`length` procedural masks of `size` x `size`.

    fixed=True (validation/test): item i is always `procedural_mask(size, seed, i)`, so every run and every
    model is scored on the same masks. fixed=False (training): every call draws a fresh mask, yet runs are
    reproducible: the mask index is a 64-bit hash (`np.random.SeedSequence`) of (seed, i, stream, draw
    counter), where stream is the DataLoader worker's seed (torch draws a new base seed from the main
    process's generator for every epoch's workers, so it follows `seed_everything`) or 0 in the main
    process, and the draw counter counts this copy's calls (so repeated calls in one process differ).
    """

    def __init__(
        self,
        size: int,
        length: int,
        seed: int = 0,
        hole_ratio: tuple[float, float] = (0.01, 0.6),
        style: str = "mixed",
        fixed: bool = True,
    ):
        if length < 1:
            raise ValueError(f"ProceduralMasks needs length >= 1, got {length}.")
        self.size, self.length, self.seed, self.fixed = size, length, seed, fixed
        self.hole_ratio, self.style = (float(hole_ratio[0]), float(hole_ratio[1])), style
        self.draws = 0
        procedural_mask(size, seed, 0, self.hole_ratio, style)  # fail now on a bad style, range or size

    def __len__(self) -> int:
        return self.length

    def mask_index(self, index: int) -> int:
        """The `procedural_mask` index that item `index` uses for this call."""
        if self.fixed:
            return index
        worker = get_worker_info()
        stream = 0 if worker is None else worker.seed
        entropy = [self.seed, index, stream, self.draws]
        self.draws += 1
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.length:
            raise IndexError(f"Mask index {index} out of range for {self.length} masks.")
        mask = procedural_mask(self.size, self.seed, self.mask_index(index), self.hole_ratio, self.style)
        return torch.from_numpy(mask)[None]


def _expected_layout(root: Path, extensions: tuple[str, ...]) -> str:
    """What a mask folder should look like, for error messages."""
    return (
        f"Expected a folder (searched recursively) of grayscale mask images ({', '.join(extensions)}) "
        f"with white = hole, such as the NVIDIA irregular mask set (pass white_is_hole=False for "
        f"black = hole), under {root}."
    )


class MaskFolder(Dataset):
    """Mask images under `root` (recursive, sorted by path), as `[1, size, size]` float32 tensors.

    Every file's hole ratio is measured from its pixels at `size` (never from its name) when the dataset is
    built, which also validates every file (`facelab.io.masks.read_mask`). The ratios are kept in memory and
    in a small JSON file in the user's cache, outside the folder (`ratio_cache_path`; ratio_cache=False
    turns it off): one file per folder (a hash of its absolute path) with an entry per file name checked
    against the file's byte size and mtime, so a second build decodes only new or changed files.
    `bucket` (an index or a label such as "(0.1,0.2]") keeps one NVIDIA bucket. augment=True adds random
    horizontal/vertical flips and 90-degree rotations (torch's RNG).
    """

    def __init__(
        self,
        root: str | Path,
        size: int,
        augment: bool = False,
        bucket: int | str | None = None,
        white_is_hole: bool = True,
        threshold: float = 0.5,
        extensions: tuple[str, ...] = MASK_EXTENSIONS,
        ratio_cache: bool = True,
    ):
        self.root, self.size, self.augment = Path(root), size, augment
        self.white_is_hole, self.threshold = white_is_hole, threshold
        extensions = tuple(extension.lower() for extension in extensions)
        layout = _expected_layout(self.root, extensions)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Mask folder {self.root} does not exist. {layout}")
        paths = sorted(path for path in self.root.rglob("*") if path.suffix.lower() in extensions)
        paths = [path for path in paths if path.is_file()]
        if not paths:
            raise FileNotFoundError(f"No mask images in {self.root}. {layout}")
        ratios = self._measure(paths, ratio_cache)
        buckets = [bucket_index(ratio) for ratio in ratios]
        self.bucket = None if bucket is None else bucket_from_name(bucket)
        if self.bucket is not None:
            keep = [i for i, item_bucket in enumerate(buckets) if item_bucket == self.bucket]
            if not keep:
                raise ValueError(
                    f"No masks under {self.root} fall in bucket {bucket_name(self.bucket)}; "
                    f"masks per bucket: {self._bucket_counts(buckets)}."
                )
            paths, ratios, buckets = [paths[i] for i in keep], ratios[keep], [buckets[i] for i in keep]
        self.paths: list[Path] = paths
        self.ratios: np.ndarray = ratios  # float64 hole ratio of each item, measured at `size`
        self.buckets: list[int | None] = buckets  # NVIDIA bucket of each item (None outside all buckets)

    @staticmethod
    def _bucket_counts(buckets: list[int | None]) -> dict[str, int]:
        """Number of masks per bucket label (and outside all buckets)."""
        labels = ["outside" if item is None else bucket_name(item) for item in buckets]
        return {label: labels.count(label) for label in dict.fromkeys(labels)}

    def _settings_key(self) -> str:
        """Cache section for the settings that change a measured ratio."""
        return f"size={self.size},white_is_hole={self.white_is_hole},threshold={self.threshold}"

    def _measure(self, paths: list[Path], use_cache: bool) -> np.ndarray:
        """Hole ratio of every file at `size`, decoding only files whose cache entry is missing or stale."""
        cache_path = ratio_cache_path(self.root) if use_cache else None
        cache = _read_cache(cache_path, self.root) if cache_path else {}
        old_section = cache.get(self._settings_key())
        old_section = old_section if isinstance(old_section, dict) else {}
        section, ratios = {}, np.empty(len(paths), np.float64)
        for i, path in enumerate(paths):
            stat, name = path.stat(), path.relative_to(self.root).as_posix()
            signature = [stat.st_size, stat.st_mtime_ns]
            entry = old_section.get(name)
            if isinstance(entry, list) and len(entry) == 3 and entry[:2] == signature:
                ratios[i] = entry[2]
            else:
                mask = self._read(path)
                ratios[i] = mask.sum(dtype=np.float64) / mask.size  # as facelab.ops.masks.hole_ratio
            section[name] = [*signature, float(ratios[i])]
        if cache_path and section != old_section:  # new, changed or deleted files
            cache[self._settings_key()] = section
            _write_cache(cache_path, self.root, cache)
        return ratios

    def _read(self, path: Path) -> np.ndarray:
        """The mask in `path` at `size`, `[size, size]` float32 with 1 = hole."""
        return read_mask(path, self.white_is_hole, self.threshold, size=self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def item_info(self, index: int) -> dict:
        """Path, hole ratio and bucket (index and label) of item `index`."""
        item_bucket = self.buckets[index]
        return {
            "path": self.paths[index],
            "hole_ratio": float(self.ratios[index]),
            "bucket": item_bucket,
            "bucket_name": None if item_bucket is None else bucket_name(item_bucket),
        }

    def __getitem__(self, index: int) -> torch.Tensor:
        mask = torch.from_numpy(self._read(self.paths[index]))
        if self.augment:
            # Flips and quarter turns keep the hole ratio and cover all 8 symmetries of the square.
            if torch.rand(()) < 0.5:
                mask = mask.flip(-1)
            if torch.rand(()) < 0.5:
                mask = mask.flip(-2)
            mask = torch.rot90(mask, int(torch.randint(4, ())), dims=(-2, -1))
        return mask.contiguous()[None]


def ratio_cache_path(root: Path) -> Path | None:
    """The ratio cache file of mask folder `root`: in the user's cache (`facelab.io.files.user_cache_dir`),
    never in the folder, so a dataset stays untouched. One file per folder, named by a hash of its absolute
    path; None when there is no home to put it in."""
    absolute = root.resolve()
    digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:16]
    try:
        return user_cache_dir("mask_ratios") / f"{absolute.name}-{digest}.json"
    except RuntimeError:  # Path.home() fails without $HOME or a passwd entry; the cache is only a speed-up
        return None


def _read_cache(cache_path: Path, root: Path) -> dict:
    """Settings key -> {file name: [byte size, mtime_ns, ratio]}; empty when the cache is missing, unreadable
    or belongs to another folder (it is only an optimisation)."""
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict) or cache.get("root") != str(root.resolve()):
        return {}
    sections = cache.get("ratios")
    return sections if isinstance(sections, dict) else {}


def _write_cache(cache_path: Path, root: Path, sections: dict) -> None:
    """Replace the cache atomically (ranks may build the dataset at once); skip it if it is not writable."""
    data = json.dumps({"root": str(root.resolve()), "ratios": sections}).encode()
    try:
        atomic_write_bytes(cache_path, data)
    except OSError:
        pass
