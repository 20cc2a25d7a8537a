"""Structure guides for two-stage inpainting: HOG (the paper), Canny edges (EdgeConnect) or none.

A guide has a native resolution (HOG: one histogram per cell; edges: per pixel). Stage 1 predicts it at
that resolution, stage 2 receives it resized to the image. Every guide maps images in [-1, 1] to values
in [0, 1] so that stage 1 can end in a sigmoid whatever the guide.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.feature import canny

from facelab.ops.color import rgb_to_gray, to_unit_range
from facelab.ops.hog import hog_cells, render_hog


class Guide:
    """Interface: `channels`, `compute`, `hole_mask`, `from_generator`, `to_image_size`, `render`."""

    kind = "abstract"
    channels = 0

    def compute(self, images: torch.Tensor) -> torch.Tensor:  # images [B, 3, H, W] in [-1, 1]
        """The ground-truth guide at its native resolution, values in [0, 1]."""
        raise NotImplementedError

    def hole_mask(self, mask: torch.Tensor) -> torch.Tensor:  # mask [B, 1, H, W], 1 = hole
        """The mask at the guide's resolution: a guide element is a hole if any of its pixels is."""
        return mask

    def from_generator(self, output: torch.Tensor) -> torch.Tensor:  # output [B, channels, H, W]
        """A full-resolution generator output reduced to the guide's native resolution."""
        return output

    def to_image_size(self, guide: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Resize a native-resolution guide to the image size (nearest: cells stay cells)."""
        if tuple(guide.shape[-2:]) == tuple(size):
            return guide
        return F.interpolate(guide, size=size, mode="nearest")

    def render(self, guide: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A `[B, 1, H, W]` picture of the guide in [0, 1] for image grids."""
        return self.to_image_size(guide[:, :1], size)


class HOGGuide(Guide):
    """Per-cell HOG histograms of the colour image (skimage's rule: per pixel the channel with the largest
    gradient). Cell values are at most sqrt(2) for [0, 1] images; we divide by that and take the square
    root, which spreads the many small values of smooth skin over the range the generator can fit."""

    kind = "hog"

    def __init__(self, orientations: int = 9, pixels_per_cell: int = 8):
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.channels = orientations

    def compute(self, images: torch.Tensor) -> torch.Tensor:
        # Float32 even under autocast: orientation binning of small gradients is where bf16 would go wrong.
        with torch.autocast(device_type=images.device.type, enabled=False):
            cells = hog_cells(to_unit_range(images.float()), self.orientations, self.pixels_per_cell)
        return cells.div(math.sqrt(2.0)).clamp(0, 1).sqrt()  # [B, orientations, H/ppc, W/ppc]

    def _cell_grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.pixels_per_cell, width // self.pixels_per_cell

    def hole_mask(self, mask: torch.Tensor) -> torch.Tensor:
        # Central differences reach one pixel across the hole's border: dilate by one pixel first, so a
        # known cell's histogram is the same whether computed from the full or the masked image.
        mask = F.max_pool2d(mask, 3, stride=1, padding=1)
        rows, cols = self._cell_grid(*mask.shape[-2:])
        cropped = mask[..., : rows * self.pixels_per_cell, : cols * self.pixels_per_cell]
        return F.max_pool2d(cropped, self.pixels_per_cell)

    def from_generator(self, output: torch.Tensor) -> torch.Tensor:
        rows, cols = self._cell_grid(*output.shape[-2:])
        cropped = output[..., : rows * self.pixels_per_cell, : cols * self.pixels_per_cell]
        return F.avg_pool2d(cropped, self.pixels_per_cell)

    def render(self, guide: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        cells = guide.square().mul(math.sqrt(2.0))  # undo the display transform: render raw histograms
        picture = render_hog(cells, self.pixels_per_cell)
        picture = picture / picture.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
        return F.pad(picture, (0, size[1] - picture.shape[-1], 0, size[0] - picture.shape[-2]))


class EdgeGuide(Guide):
    """Canny edges of the grayscale image (EdgeConnect's guide; sigma 2 is its default). Runs on the CPU
    through skimage, as EdgeConnect does in its data loader."""

    kind = "edge"
    channels = 1

    def __init__(self, sigma: float = 2.0):
        self.sigma = sigma

    def compute(self, images: torch.Tensor) -> torch.Tensor:
        gray = rgb_to_gray(to_unit_range(images)).squeeze(1).detach().double().cpu().numpy()
        edges = np.stack([canny(image, sigma=self.sigma) for image in gray])
        return torch.from_numpy(edges).to(images.device, images.dtype).unsqueeze(1)  # [B, 1, H, W]


class NoGuide(Guide):
    """Plain inpainting: stage 2 alone, no structure prior (an ablation)."""

    kind = "none"

    def compute(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(images.shape[0], 0, *images.shape[-2:])


GUIDES = {"hog": HOGGuide, "edge": EdgeGuide, "none": NoGuide}


def make_guide(kind: str = "hog", **options) -> Guide:
    """Build a guide from its config (`kind` plus that guide's options)."""
    if kind not in GUIDES:
        raise ValueError(
            f"Unknown guide kind {kind!r} (config key model.guide.kind); choose one of {sorted(GUIDES)}."
        )
    return GUIDES[kind](**options)
