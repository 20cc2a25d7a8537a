"""Face images alone (no masks): what a StyleGAN2 or a face parser trains on.

Any face source of `datamodules.faces` (synthetic faces, CelebA, a folder); items keep the source's
`image` and, when it has them, `parsing` maps. Training order and flips depend on (seed, epoch, index)
alone and the pass position travels in the checkpoint, so a fit resumed mid-epoch sees the very batches
an uninterrupted one would (the same machinery as the inpainting datamodule).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.face_render import CELEBAMASK_HQ_CLASSES
from datamodules.seeded_splits import SeededSplitsDataModule

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


class FaceImageDataModule(SeededSplitsDataModule):
    """Faces from a source, in resumable seeded batches; validation and test in file order."""

    def __init__(self, faces, batch_size: int = 8, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False, flip: bool = False, seed: int = 0, require_parsing: bool = False):
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, seed)
        self.faces, self.flip, self.require_parsing = faces, flip, require_parsing

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
