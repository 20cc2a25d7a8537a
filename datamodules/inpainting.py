"""The inpainting datamodule: face images paired with hole masks (1 = hole).

Training pairs each face with a fresh random mask; validation and test pair face i with mask i, so every
run and every model is scored on the same holes.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from datamodules.masks import MaskFolder, ProceduralMasks
from datamodules.seeded_splits import SeededSplitsDataModule

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


class InpaintingDataModule(SeededSplitsDataModule):
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
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, seed)
        self.faces, self.masks, self.flip = faces, masks, flip
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
