"""Datamodules whose splits come in resumable seeded batches: the training order, and every per-item draw made
from the epoch-tagged index, depend on (seed, epoch, index) alone, and the pass position travels in the
checkpoint, so a fit resumed mid-epoch sees the very batches an uninterrupted one would.

`SeededSplitsDataModule` owns the loaders and the resume position; a subclass says only how a split's
dataset is built (`split`). The inpainting datamodule and the face-image datamodule are two such.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler


class EpochShuffle(Sampler[int]):
    """A fresh order every epoch that depends on (seed, epoch) alone, each index tagged with its epoch
    (`epoch * length + item`) so the dataset can draw that epoch's mask and flip from it too. A fit resumed
    at an epoch boundary therefore sees exactly the batches an uninterrupted fit would. The epoch is read
    when iteration starts (from the trainer), which also works under Lightning's distributed wrapper."""

    def __init__(self, length: int, seed: int, current_epoch: Callable[[], int]):
        self.length, self.seed, self.current_epoch = length, seed, current_epoch

    def __iter__(self):
        epoch = self.current_epoch()
        order = np.random.default_rng([self.seed, epoch]).permutation(self.length)
        return iter((epoch * self.length + order).tolist())

    def __len__(self) -> int:
        return self.length


class ResumableBatchSampler(BatchSampler):
    """Batches of a sampler, minus the ones this rank already trained on when a fit resumes mid-epoch.
    Skipping happens on indices (nothing is loaded), after Lightning's distributed split, so each rank skips
    its own first batches. `batches_to_skip` is asked once per pass, when the first batch is drawn (like
    EpochShuffle's epoch): Lightning may create the iterator before it moves on to the next epoch."""

    def __init__(self, sampler, batch_size: int, drop_last: bool, batches_to_skip: Callable[[], int]):
        super().__init__(sampler, batch_size, drop_last)
        self.batches_to_skip = batches_to_skip

    def __iter__(self):
        yield from islice(super().__iter__(), self.batches_to_skip(), None)


def check_loader_settings(batch_size, eval_batch_size, num_workers) -> None:
    """Config errors naming the key, before torch's sampler meets a batch size it cannot use."""
    for key, value, lowest in (
        ("data.batch_size", batch_size, 1),
        ("data.eval_batch_size", eval_batch_size, 1),
        ("data.num_workers", num_workers, 0),
    ):
        if value is None and key == "data.eval_batch_size":
            continue  # null: the training batch size
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ValueError(f"{key}={value!r}: must be an integer >= {lowest}.")


class SeededSplitsDataModule(pl.LightningDataModule):
    """Train / val / test splits (built by `split`), the training split in resumable seeded batches, the
    others in file order."""

    def __init__(
        self,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        check_loader_settings(batch_size, eval_batch_size, num_workers)
        self.seed = seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.datasets: dict[str, Dataset] = {}
        self._resume_position: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def split(self, split: str) -> Dataset:
        """The split's dataset, built on first use and kept in `self.datasets`."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, ("train", "val", "test")):
            self.split(split)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def state_dict(self) -> dict:
        """Where the training pass stands (saved with every checkpoint): with the seeded order, this is all
        a mid-epoch resume needs to continue with the very next batch instead of restarting the epoch."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_position = (int(state["epoch"]), int(state["batches_done"]))

    def _batches_to_skip(self) -> int:
        """Batches of the current epoch already trained before a resume (0 otherwise); used once."""
        position, self._resume_position = self._resume_position, None
        if position is None or position[0] != self._current_epoch():
            return 0
        return position[1]

    def _loader(self, split: str) -> DataLoader:
        dataset = self.split(split)
        workers = self.num_workers
        common = dict(num_workers=workers, pin_memory=self.pin_memory, persistent_workers=workers > 0)
        if split != "train":
            return DataLoader(dataset, batch_size=self.eval_batch_size, **common)
        sampler = EpochShuffle(len(dataset), self.seed, self._current_epoch)
        batches = ResumableBatchSampler(
            sampler, self.batch_size, drop_last=True, batches_to_skip=self._batches_to_skip
        )
        return DataLoader(dataset, batch_sampler=batches, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
