"""The inpainting datamodule: face images paired with hole masks (1 = hole).

Training pairs each face with a fresh random mask; validation and test pair face i with mask i, so every
run and every model is scored on the same holes.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from datamodules.masks import MaskFolder, ProceduralMasks

TRAINING_DRAWS = 2**62  # epoch-tagged training indices stay below this for any realistic run


class ProceduralMaskSource:
    """Free-form strokes and boxes drawn on the fly (`facelab.ops.masks`)."""

    def __init__(
        self,
        size: int = 64,
        seed: int = 0,
        hole_ratio: tuple[float, float] = (0.01, 0.6),
        style: str = "mixed",
        eval_length: int = 2000,
    ):
        self.size, self.seed, self.hole_ratio, self.style = size, seed, tuple(hole_ratio), style
        self.eval_length = eval_length

    def dataset(self, split: str, length: int) -> Dataset:
        """Masks fixed by index (val and test use other seeds than training). Training items are
        epoch-tagged draws (EpochShuffle), so the training set is "every index": a new mask per epoch that
        a resumed fit draws again identically."""
        seed = self.seed + ("train", "val", "test").index(split) * 1_000_003
        length = TRAINING_DRAWS if split == "train" else max(length, 1)
        return ProceduralMasks(self.size, length, seed=seed, hole_ratio=self.hole_ratio, style=self.style)


class MaskFolderSource:
    """Mask images from disk (e.g. the NVIDIA irregular mask set). Use disjoint folders for training and
    evaluation: EdgeConnect and the HOG paper trained on the 12k NVIDIA *test* masks, which leaks into
    any evaluation on the same files."""

    def __init__(
        self,
        train_root: str,
        eval_root: str | None = None,
        size: int = 256,
        bucket: str | int | None = None,
        white_is_hole: bool = True,
    ):
        self.train_root, self.eval_root = train_root, eval_root or train_root
        self.size, self.bucket, self.white_is_hole = size, bucket, white_is_hole

    def dataset(self, split: str, length: int) -> Dataset:
        """Augmented training masks, or the evaluation folder's masks in file order."""
        if split == "train":
            return MaskFolder(self.train_root, self.size, augment=True, white_is_hole=self.white_is_hole)
        return MaskFolder(
            self.eval_root, self.size, augment=False, bucket=self.bucket, white_is_hole=self.white_is_hole
        )


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


class InpaintingDataset(Dataset):
    """Face i with mask i (modulo the number of masks): `{"image", "mask", "meta"}`. An index past the
    faces (an epoch-tagged draw from EpochShuffle) picks face `index % len(faces)`, and mask and flip by
    the whole index."""

    def __init__(self, faces: Dataset, masks: Dataset, flip: bool = False, seed: int = 0):
        self.faces, self.masks, self.flip, self.seed = faces, masks, flip, seed

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> dict:
        face = self.faces[index % len(self.faces)]
        image = face["image"]  # [3, H, W]
        mask = self.masks[index % len(self.masks)]  # [1, H, W], 1 = hole
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"Mask size {tuple(mask.shape[-2:])} differs from image size {tuple(image.shape[-2:])} "
                f"(item {face['meta'].get('name', index)}). Set data.masks.size equal to data.faces.size."
            )
        if self.flip and np.random.default_rng([self.seed, index]).random() < 0.5:
            image = image.flip(-1)  # EdgeConnect's augmentation; the mask is random anyway
        meta = dict(face["meta"], hole_ratio=float(mask.mean()))
        return {"image": image, "mask": mask, "meta": meta}


def _check_loader_settings(batch_size, eval_batch_size, num_workers) -> None:
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


class InpaintingDataModule(pl.LightningDataModule):
    """Faces from a source (`datamodules.faces`) paired with masks from a mask source."""

    def __init__(
        self,
        faces,
        masks,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        flip: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        _check_loader_settings(batch_size, eval_batch_size, num_workers)
        self.faces, self.masks, self.seed = faces, masks, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.flip = num_workers, pin_memory, flip
        self.datasets: dict[str, Dataset] = {}
        self._resume_position: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint
        face_size, mask_size = getattr(faces, "size", None), getattr(masks, "size", None)
        if face_size != mask_size:
            raise ValueError(
                f"data.faces.size={face_size} but data.masks.size={mask_size}: masks must match the images. "
                "data.masks.size follows data.faces.size unless overridden: drop that override or match them."
            )

    def split(self, split: str) -> Dataset:
        """The paired dataset of a split, built on first use."""
        if split not in self.datasets:
            faces = self.faces.dataset(split)
            masks = self.masks.dataset(split, len(faces))
            flip = self.flip and split == "train"
            self.datasets[split] = InpaintingDataset(faces, masks, flip=flip, seed=self.seed)
        return self.datasets[split]

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
