"""The items of a latent-fit job on this rank, and the data of one chunk of them.

`FitItems` reads the manifest (`facelab.fit.manifest`), keeps this process's shard and loads items as the
data contract's batch dicts. `ChunkData` feeds one chunk to a short `Trainer.fit`: the same batch at every
step, since a latent search revisits its targets, not new samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

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
    ):
        self.columns = Columns.from_config(columns)
        self.image_size = image_size
        self.all_items = read_manifest(manifest, self.columns)
        self.shard = resolve_shard(shard_rank, shard_world)
        self.items = self.shard.select(self.all_items)

    def load(self, item: FitItem) -> dict:
        """One item: image-file columns as `[3, S, S]` tensors in [-1, 1], everything else in `meta`."""
        sample, meta = {}, {"item_id": item.item_id}
        for key, value in item.values.items():
            if key in self.columns.paths and str(value).lower().endswith(IMAGE_EXTENSIONS):
                sample[key] = to_tensor(
                    center_crop_resize(read_rgb(value), self.image_size).copy()
                )  # writable
                meta[f"{key}_path"] = value
            else:
                meta[key] = value
        return {**sample, "meta": meta}

    def collate(self, samples: Sequence[dict]) -> dict:
        """Stack tensors to `[B, ...]`; `meta` becomes a dict of per-item lists."""
        batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0] if key != "meta"}
        batch["meta"] = {key: [s["meta"].get(key) for s in samples] for key in samples[0]["meta"]}
        return batch

    def chunk(self, items: Sequence[FitItem], steps: int) -> ChunkData:
        return ChunkData(self.collate([self.load(item) for item in items]), steps)


class _RepeatedBatch(Dataset):
    def __init__(self, batch: dict, steps: int):
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> dict:
        return self.batch


class ChunkData(pl.LightningDataModule):
    """One chunk's batch, `steps` times per epoch (`batch` is also read by the module to size its latents)."""

    def __init__(self, batch: dict, steps: int):
        super().__init__()
        self.batch, self.steps = batch, steps

    @property
    def item_ids(self) -> list[str]:
        return list(self.batch["meta"]["item_id"])

    def train_dataloader(self) -> DataLoader:
        # batch_size=None: each "sample" already is the whole chunk's batch
        return DataLoader(_RepeatedBatch(self.batch, self.steps), batch_size=None, shuffle=False)
