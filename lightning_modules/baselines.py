"""Classical inpainting baselines, scored by the same metric callback as a trained model.

  zero        holes set to 0 of the data contract's [-1, 1] range (mid-gray), as the inpainting module's
              `psnr_zero_fill` floor
  mean        holes set to the mean colour of the image's known pixels (per channel)
  biharmonic  `skimage.restoration.inpaint_biharmonic`, per image on the CPU

Each step returns the inpainting module's dict (`masked`, `pred`, `composite`, `image`), so
`facelab-eval baseline=<method>` runs the same data, masks and callbacks as `facelab-eval ckpt=<file>`.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from skimage.restoration import inpaint_biharmonic

from facelab.ops.masks import composite, masked_input

METHODS = ("zero", "mean", "biharmonic")


def fill_holes(image: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """`[B, 3, H, W]` in [-1, 1] with `mask` `[B, 1, H, W]` (1 = hole) -> the baseline's fill, same shape."""
    if method == "zero":
        return torch.zeros_like(image)
    if method == "mean":
        known = 1 - mask
        known_count = known.sum(dim=(2, 3), keepdim=True).clamp_min(1)  # an all-hole image falls back to 0
        mean = (image * known).sum(dim=(2, 3), keepdim=True) / known_count
        return mean.expand_as(image)
    if method == "biharmonic":
        filled = []
        images, holes = image.detach().cpu().double().numpy(), mask.detach().cpu().numpy()[:, 0] > 0.5
        for item, hole in zip(images, holes, strict=True):
            # inpaint_biharmonic solves for the hole pixels only; an image without holes is returned as is.
            filled.append(
                inpaint_biharmonic(item.transpose(1, 2, 0), hole, channel_axis=-1)
                if hole.any()
                else item.transpose(1, 2, 0)
            )
        return torch.from_numpy(np.stack(filled).transpose(0, 3, 1, 2)).to(image).clamp(-1, 1)
    raise ValueError(f"Unknown baseline {method!r}; choose one of {METHODS}.")


class ClassicalInpainting(pl.LightningModule):
    """A parameter-free LightningModule whose evaluation steps fill holes with `method`."""

    def __init__(self, method: str = "zero"):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"baseline={method!r}; choose one of {METHODS}.")
        self.save_hyperparameters()
        self.method = method

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> dict:
        pred = fill_holes(image, mask, self.method)
        return {
            "masked": masked_input(image, mask, 0.0),
            "pred": pred,
            "composite": composite(pred, image, mask),
            "image": image,
        }

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self(batch["image"], batch["mask"])

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self(batch["image"], batch["mask"])

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self(batch["image"], batch["mask"])
