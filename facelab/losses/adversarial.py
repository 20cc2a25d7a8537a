"""EdgeConnect's GAN losses (nsgan, lsgan, hinge) on raw discriminator logits.

EdgeConnect's discriminators end in a sigmoid for nsgan/lsgan; ours return logits and the sigmoid lives here.
For nsgan that allows BCE-with-logits, the same value as BCE(sigmoid) without its saturation at large
|logits|. The discriminator loss is the mean of its real and fake terms, (real + fake) / 2, as EdgeConnect's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_KINDS = ("nsgan", "lsgan", "hinge")


class AdversarialLoss:
    """`discriminator(real_logits, fake_logits)` and `generator(fake_logits)` for one GAN objective."""

    def __init__(self, kind: str = "nsgan"):
        if kind not in GAN_KINDS:
            raise ValueError(f"Unknown GAN loss {kind!r}; choose one of {GAN_KINDS}.")
        self.kind = kind

    def __repr__(self) -> str:
        return f"AdversarialLoss(kind={self.kind!r})"

    def _term(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        """The loss pushing `logits` towards 'real' (1) or 'fake' (0), nsgan/lsgan only."""
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        if self.kind == "nsgan":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(torch.sigmoid(logits), target)

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """D's loss (scalar) from D(real) and D(fake) logits (fake detached by the caller)."""
        if self.kind == "hinge":
            real, fake = F.relu(1 - real_logits).mean(), F.relu(1 + fake_logits).mean()
        else:
            real, fake = self._term(real_logits, True), self._term(fake_logits, False)
        return (real + fake) / 2

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """G's loss (scalar) from D(fake) logits: non-saturating for nsgan, -E[D(fake)] for hinge."""
        if self.kind == "hinge":
            return -fake_logits.mean()
        return self._term(fake_logits, True)
