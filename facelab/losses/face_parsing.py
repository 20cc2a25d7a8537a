"""Face-parsing losses: cross-entropy with online hard example mining (OHEM), as face-parsing.PyTorch trains.

zllrunning/face-parsing.PyTorch `loss.py` `OhemCELoss` (from CoinCheung/BiSeNet): per-pixel cross-entropy,
sorted from hardest to easiest; if the `n_min`-th hardest pixel still has a loss above -log(thresh), the
mean over every pixel above -log(thresh), else the mean over the `n_min` hardest. Its `train.py` uses
thresh 0.7 (`score_thres`) and n_min = batch * H * W // 16 for all three heads, summed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def ohem_cross_entropy(
    logits: torch.Tensor,   # [B, n_classes, H, W]
    labels: torch.Tensor,   # [B, H, W] long
    thresh: float = 0.7,    # keep pixels whose probability of the true class is below this ...
    n_min: int | None = None,  # ... but at least this many (default B * H * W // 16)
    ignore_index: int = -100,
) -> torch.Tensor:
    """The OHEM cross-entropy (a scalar); ignored pixels count as easy (loss 0), as in the reference."""
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none").flatten()
    if n_min is None:
        n_min = labels.numel() // 16
    n_min = min(n_min, per_pixel.numel() - 1)
    loss_thresh = -math.log(thresh)
    hardest_first, _ = torch.sort(per_pixel, descending=True)
    if hardest_first[n_min] > loss_thresh:
        return hardest_first[hardest_first > loss_thresh].mean()
    return hardest_first[:n_min].mean()


def parsing_loss(
    logits: tuple[torch.Tensor, ...],  # main head, then the auxiliary heads, each [B, n_classes, H, W]
    labels: torch.Tensor,              # [B, H, W]
    kind: str = "ohem",                # ohem | ce
    thresh: float = 0.7,
    n_min_fraction: float = 1 / 16,
    aux_weight: float = 1.0,           # face-parsing.PyTorch sums the three heads: lossp + loss2 + loss3
) -> tuple[torch.Tensor, dict]:
    """Sum over heads of the chosen cross-entropy; parts named `main`, `aux16`, `aux32`."""
    if kind not in ("ohem", "ce"):
        raise ValueError(f"model.loss.kind={kind!r}; use 'ohem' (face-parsing.PyTorch) or 'ce'.")
    n_min = int(labels.numel() * n_min_fraction)
    parts = {}
    for name, head in zip(("main", "aux16", "aux32"), logits, strict=False):
        if kind == "ohem":
            parts[name] = ohem_cross_entropy(head, labels, thresh=thresh, n_min=n_min)
        else:
            parts[name] = F.cross_entropy(head, labels)
    total = parts["main"] + aux_weight * sum(v for k, v in parts.items() if k != "main")
    return total, {k: v.detach() for k, v in parts.items()}
