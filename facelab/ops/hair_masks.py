"""Barbershop's segmentation-mask arithmetic: the target mask, its hole filling, dilation / erosion, and the
mixing of the structure tensor F by soft masks. Pure functions, batched, with the official code's semantics
(ZPdesu/Barbershop models/Alignment.py, utils/image_utils.py) and facelab's conventions (labels long
`[B, H, W]`, masks float `[B, 1, H, W]` with 1 = the region named).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ParserLabels:
    """Which parser classes Barbershop's rules name. `transfer`: the region taken from the references (hair
    for hair transfer; the face parts for a face swap); the first one labels the region where the hole
    filling extends it. Barbershop's seg.pth (16 classes): hair 10, background 0, and class 15 kept out of
    the region the identity's background lends to the new hair (the official code names it only by
    number). For CelebAMask-HQ's 19 classes: hair 17, and cloth (16) plays that role."""

    transfer: tuple[int, ...] = (10,)
    background: int = 0
    not_hair_region: tuple[int, ...] = (15,)

    def __post_init__(self):
        object.__setattr__(self, "transfer", tuple(self.transfer))
        object.__setattr__(self, "not_hair_region", tuple(self.not_hair_region))
        if not self.transfer:
            raise ValueError("labels.transfer must name at least one parser class (hair: [10] for seg.pth).")


def within(labels: torch.Tensor, classes: tuple[int, ...]) -> torch.Tensor:
    """Bool `[B, H, W]`: where `labels` is one of `classes`."""
    return torch.isin(labels, torch.tensor(classes, device=labels.device))


def region(labels: torch.Tensor, classes: tuple[int, ...] | int) -> torch.Tensor:
    """`[B, H, W]` labels -> float `[B, 1, H, W]`, 1 where the label is one of `classes`."""
    classes = (classes,) if isinstance(classes, int) else classes
    return within(labels, classes).float().unsqueeze(1)


def _cross_dilate(mask: torch.Tensor, border: float) -> torch.Tensor:
    """One binary dilation with scipy's default structure (the 4-neighbour cross); `border` fills outside."""
    padded = F.pad(mask, (1, 1, 1, 1), value=border)
    centre = padded[..., 1:-1, 1:-1]
    neighbours = [
        padded[..., :-2, 1:-1],
        padded[..., 2:, 1:-1],
        padded[..., 1:-1, :-2],
        padded[..., 1:-1, 2:],
    ]
    return torch.stack([centre, *neighbours]).amax(0)


def dilate(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """`scipy.ndimage.binary_dilation(mask, iterations=n)` on `[B, 1, H, W]` binary masks."""
    for _ in range(iterations):
        mask = _cross_dilate(mask, 0.0)
    return mask


def erode(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """`scipy.ndimage.binary_erosion(mask, iterations=n)` (border_value 0: the image edge erodes too)."""
    for _ in range(iterations):
        mask = 1 - _cross_dilate(1 - mask, 1.0)
    return mask


def nearest(mask: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(mask, size=(size, size), mode="nearest")


def navier_stokes_fill(labels: torch.Tensor, holes: torch.Tensor, hair: int) -> torch.Tensor:
    """Barbershop's hole filling of the target label map: `cv2.inpaint` (Navier-Stokes, radius 3) of the
    map scaled so that hair is 1.0 and every hole 0, then truncated to uint8: a filled pixel becomes hair only
    where the fill reaches 1.0, background (0) otherwise.
    `labels` long `[B, H, W]`, `holes` bool `[B, H, W]`."""
    filled = []
    for label_map, hole in zip(labels.cpu(), holes.cpu(), strict=True):
        scaled = torch.where(hole, torch.zeros_like(label_map), label_map).float() / hair
        mask = hole.numpy().astype(np.uint8) * 255
        painted = cv2.inpaint(scaled.numpy().astype(np.float32), mask, 3, cv2.INPAINT_NS)
        filled.append(torch.from_numpy(painted.astype(np.uint8).astype(np.int64) * hair))
    return torch.stack(filled).to(labels.device)


@dataclass
class TargetMask:
    """The hair-transfer target labels before the GAN-based filling (all `[B, H, W]`)."""

    labels: torch.Tensor  # long: identity's labels without its hair, the reference's hair pasted on
    uncovered: torch.Tensor  # bool: the "OB region": reference foreground over identity background
    foreground: torch.Tensor  # long 0/1: identity not background, or reference hair ("ggg")
    identity_hair: torch.Tensor  # float [B, 1, H, W]
    reference_hair: torch.Tensor  # float [B, 1, H, W]


def compose_target(identity: torch.Tensor, reference: torch.Tensor, labels: ParserLabels) -> TargetMask:
    """The official label composition (`create_target_segmentation_mask`, before its auto-inpainting):
    the identity's map with its hair removed, the reference's hair pasted on, and the region where the
    reference has neither hair, background nor `not_hair_region` while the identity has background filled by
    `navier_stokes_fill`. `identity`, `reference`: long `[B, H, W]` parser labels of the two images."""
    transfer, background, primary = labels.transfer, labels.background, labels.transfer[0]
    ref_is_hair = within(reference, transfer)
    keep_out = within(reference, labels.not_hair_region)
    uncovered = ~ref_is_hair & (reference != background) & ~keep_out & (identity == background)
    without_hair = torch.where(within(identity, transfer), torch.full_like(identity, background), identity)
    pasted = torch.where(ref_is_hair, reference, without_hair)
    pasted_hair = within(pasted, transfer)
    holes = ((pasted != background) & ~pasted_hair) | uncovered
    known = torch.where(pasted_hair, torch.full_like(pasted, primary), pasted)  # one level for the region
    filled = navier_stokes_fill(known, holes, primary)
    target = torch.where(uncovered, filled, pasted)
    foreground = ((identity != background) | ref_is_hair).long()
    return TargetMask(target, uncovered, foreground, region(identity, transfer), region(reference, transfer))


def resize_soft(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A `[B, 1, h, w]` mask resized bicubically (align_corners False), as masks enter F's 32x32 grid."""
    return F.interpolate(mask, size=(size, size), mode="bicubic")


def mix_structure(
    intermediate: torch.Tensor,  # [B, C, s, s] identity's F after aligning to the target mask
    identity_f: torch.Tensor,  # [B, C, s, s] identity's FS-embedding F
    aligned_reference_f: torch.Tensor,  # [B, C, s, s] reference's F after its alignment
    reference_f: torch.Tensor,  # [B, C, s, s] reference's FS-embedding F
    identity_hair: torch.Tensor,  # [B, 1, H, W] at the parse size
    target_hair: torch.Tensor,  # [B, 1, H, W]
    reference_hair: torch.Tensor,  # [B, 1, H, W]
    smooth: int = 5,
    mask_size: int = 256,
) -> torch.Tensor:
    """Barbershop's F mixing (Alignment.align_images with align_more_region=False): the identity's own F
    outside the dilated union of old and new hair, the aligned reference inside the eroded new hair, and the
    reference's own F where its hair and the new hair overlap (eroded). Returns `[B, C, s, s]`."""
    size = intermediate.shape[-1]
    freed = 1 - (1 - identity_hair) * (1 - target_hair)
    keep_identity = 1 - resize_soft(dilate(nearest(freed, mask_size), smooth), size)
    mixed = intermediate + keep_identity * (identity_f - intermediate)
    keep_mixed = 1 - resize_soft(erode(nearest(target_hair, mask_size), smooth), size)
    mixed = aligned_reference_f + keep_mixed * (mixed - aligned_reference_f)
    overlap = nearest(reference_hair * target_hair, mask_size)
    keep_rest = 1 - resize_soft(erode(overlap, smooth), size)
    return reference_f + keep_rest * (mixed - reference_f)
