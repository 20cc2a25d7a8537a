"""The items of a latent-fit job on this rank, loaded as the data contract's batch dicts.

`FitItems` reads the manifest (`facelab.fit.manifest`), keeps this process's shard and loads items: image
columns as `[3, S, S]` tensors in [-1, 1], `.pt` columns (e.g. latents saved by another job) as the
tensors they hold. A chunk's batch goes to the module explicitly (`LatentFit.begin_stage`): a latent search
revisits its targets at every step, so no dataloader streams samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from datamodules.fit_inputs import InputPreparation
from facelab.fit.manifest import Columns, FitItem, read_manifest, resolve_shard
from facelab.io.images import IMAGE_EXTENSIONS, center_crop_resize, read_rgb, to_tensor


class FitItems:
    """A manifest's items, this rank's shard of them, and their loading at `image_size`."""

    def __init__(
        self,
        manifest: str,
        columns: Mapping | None = None,
        image_size: int = 64,
        shard_rank: int | None = None,
        shard_world: int | None = None,
        exact_size: bool = False,
        align: bool = False,
        aligned_dir: str | None = None,
        photo_columns: list[str] | None = None,
    ):
        self.columns = Columns.from_config(columns)
        # the columns checked (exact_size) and aligned (align): photos, not masks or latents
        image_columns = tuple(photo_columns) if photo_columns else tuple(self.columns.paths)
        self.inputs = InputPreparation(image_size, exact_size, align, aligned_dir, image_columns)
        self.image_size = image_size
        self.all_items = read_manifest(manifest, self.columns)
        self.shard = resolve_shard(shard_rank, shard_world)
        self.items = self.shard.select(self.all_items)

    def prepare(self, items: Sequence[FitItem]) -> list[FitItem]:
        """Check every image of `items` (and align raw photos, if configured) before any fitting."""
        return self.inputs.prepare(list(items))

    def load_image(self, path: str) -> torch.Tensor:
        """One image file as `[3, S, S]` in [-1, 1] (centre-cropped to a square, resized to `image_size`)."""
        return to_tensor(center_crop_resize(read_rgb(path), self.image_size).copy())  # copy: writable

    def load(self, item: FitItem) -> dict:
        """One item: image columns as tensors, `.pt` columns as their tensors, everything else in `meta`."""
        sample, meta = {}, {"item_id": item.item_id}
        for key, value in item.values.items():
            is_path = key in self.columns.paths
            if is_path and str(value).lower().endswith(IMAGE_EXTENSIONS):
                sample[key] = self.load_image(value)
                meta[f"{key}_path"] = value
            elif is_path and str(value).lower().endswith(".pt") and not key.startswith("generator"):
                sample[key] = load_tensor_file(value, f"{item.source}: {key}")
                meta[f"{key}_path"] = value
            else:
                meta[key] = value
        return {**sample, "meta": meta}

    def collate(self, samples: Sequence[dict]) -> dict:
        """Stack tensors to `[B, ...]`; `meta` becomes a dict of per-item lists."""
        # An optional tensor column some items lack (a DragGAN mask) is zeros there, its `<key>_path` None.
        keys = list(dict.fromkeys(key for s in samples for key in s if key != "meta"))
        batch = {}
        for key in keys:
            present = next(s[key] for s in samples if key in s)
            batch[key] = torch.stack([s.get(key, torch.zeros_like(present)) for s in samples])
        meta_keys = list(dict.fromkeys(key for s in samples for key in s["meta"]))
        batch["meta"] = {key: [s["meta"].get(key) for s in samples] for key in meta_keys}
        return batch

    def batch(self, items: Sequence[FitItem]) -> dict:
        """The batch dict of `items`."""
        return self.collate([self.load(item) for item in items])


def load_tensor_file(path: str, where: str) -> torch.Tensor:
    """A tensor saved with torch.save (e.g. another job's `latent.pt`), read without running pickled code."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{where}: {path} is not a readable tensor file ({error}).") from error
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{where}: {path} holds a {type(value).__name__}, not a tensor.")
    return value
