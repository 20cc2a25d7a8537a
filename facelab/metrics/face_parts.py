"""Which face parts a label map shows: the figure that says whether a generator's samples are faces a
parser can read (issue 12: skin, both eyes, nose, mouth and hair), next to the same figure on real faces.

A part is found in an image when its classes (CelebAMask-HQ order) own at least `min_pixels` pixels of
the label map. The mouth is any of `mouth`, `u_lip`, `l_lip` (a closed mouth has lips and no `mouth`).
"""

from __future__ import annotations

import torch

from datamodules.face_render import CELEBAMASK_HQ_CLASSES

# part -> the CelebAMask-HQ classes that make it up
FACE_PARTS: dict[str, tuple[str, ...]] = {
    "skin": ("skin",), "left eye": ("l_eye",), "right eye": ("r_eye",), "nose": ("nose",),
    "mouth": ("mouth", "u_lip", "l_lip"), "hair": ("hair",),
}


def parts_found(labels: torch.Tensor, min_pixels: int = 4, parts: dict = FACE_PARTS) -> torch.Tensor:
    """bool [B, len(parts)]: whether each part owns at least `min_pixels` pixels of each label map
    (labels: long [B, H, W], CelebAMask-HQ class ids)."""
    if labels.ndim != 3:
        raise ValueError(f"labels must be [B, H, W] class ids, got shape {tuple(labels.shape)}")
    columns = []
    for classes in parts.values():
        ids = torch.tensor([CELEBAMASK_HQ_CLASSES.index(name) for name in classes], device=labels.device)
        columns.append(torch.isin(labels, ids).flatten(1).sum(1) >= min_pixels)
    return torch.stack(columns, dim=1)


def found_fractions(found: torch.Tensor, parts: dict = FACE_PARTS) -> dict[str, float]:
    """The fraction of images in which each part is found, and `all` (every part in the same image)."""
    fractions = {name: float(found[:, k].float().mean()) for k, name in enumerate(parts)}
    fractions["all"] = float(found.all(dim=1).float().mean())
    return fractions
