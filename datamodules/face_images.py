"""Face images alone (no masks): what a StyleGAN2 or a face parser trains on.

Any face source of `datamodules.faces` (synthetic faces, CelebA, a folder); items keep the source's
`image` and, when it has them, `parsing` maps. Training order and flips depend on (seed, epoch, index)
alone and the pass position travels in the checkpoint, so a fit resumed mid-epoch sees the very batches
an uninterrupted one would (the same machinery as the inpainting datamodule).
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.face_render import CELEBAMASK_HQ_CLASSES
from datamodules.inpainting import EpochShuffle, ResumableBatchSampler

# A horizontal flip turns the person's left parts into right ones: swap their labels.
_MIRRORED = {"l_eye": "r_eye", "l_brow": "r_brow", "l_ear": "r_ear"}


def mirrored_class_table() -> torch.Tensor:
    """Class id -> class id after a horizontal flip, in CelebAMask-HQ order [19]."""
    table = torch.arange(len(CELEBAMASK_HQ_CLASSES))
    for left, right in _MIRRORED.items():
        i, j = CELEBAMASK_HQ_CLASSES.index(left), CELEBAMASK_HQ_CLASSES.index(right)
        table[i], table[j] = j, i
    return table


class FaceImages(Dataset):
    """`{"image", "parsing"?, "meta"}` of face `index % len(faces)`, flipped by a draw from (seed, index)."""

    def __init__(self, faces: Dataset, flip: bool = False, seed: int = 0):
        self.faces, self.flip, self.seed = faces, flip, seed
        self.mirror_classes = mirrored_class_table()

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> dict:
        face = self.faces[index % len(self.faces)]
        item = {"image": face["image"], "meta": face["meta"]}  # landmarks are not needed here
        if "parsing" in face:
            item["parsing"] = face["parsing"]
        if self.flip and np.random.default_rng([self.seed, index]).random() < 0.5:
            item["image"] = item["image"].flip(-1)
            if "parsing" in item:
                item["parsing"] = self.mirror_classes[item["parsing"].flip(-1)]
        return item


class FaceImageDataModule(pl.LightningDataModule):
    """Faces from a source, in resumable seeded batches; validation and test in file order."""

    def __init__(self, faces, batch_size: int = 8, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False, flip: bool = False, seed: int = 0, require_parsing: bool = False):
        super().__init__()
        self.faces, self.seed, self.flip, self.require_parsing = faces, seed, flip, require_parsing
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.datasets: dict[str, Dataset] = {}
        self._resume_position: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def split(self, split: str) -> Dataset:
        """The split's dataset, built (and checked for parsing maps when required) on first use."""
        if split not in self.datasets:
            flip = self.flip and split == "train"
            dataset = FaceImages(self.faces.dataset(split), flip=flip, seed=self.seed)
            if self.require_parsing and len(dataset) and "parsing" not in dataset[0]:
                raise ValueError(
                    f"data.faces ({type(self.faces).__name__}) gives no 'parsing' maps, which the face "
                    "parser trains on. Use data.faces._target_=datamodules.faces.SyntheticFaceSource or "
                    "another source with parsing maps.")
            self.datasets[split] = dataset
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, ("train", "val", "test")):
            self.split(split)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def state_dict(self) -> dict:
        """Where the training pass stands, saved with every checkpoint (see InpaintingDataModule)."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_position = (int(state["epoch"]), int(state["batches_done"]))

    def _batches_to_skip(self) -> int:
        position, self._resume_position = self._resume_position, None
        if position is None or position[0] != self._current_epoch():
            return 0
        return position[1]

    def _loader(self, split: str) -> DataLoader:
        dataset = self.split(split)
        common = dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0)
        if split != "train":
            return DataLoader(dataset, batch_size=self.eval_batch_size, **common)
        sampler = EpochShuffle(len(dataset), self.seed, self._current_epoch)
        batches = ResumableBatchSampler(sampler, self.batch_size, drop_last=True,
                                        batches_to_skip=self._batches_to_skip)
        return DataLoader(dataset, batch_sampler=batches, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
