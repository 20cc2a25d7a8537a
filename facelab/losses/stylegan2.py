"""StyleGAN2 losses: non-saturating logistic G/D loss, R1 gradient penalty, path-length penalty.

Definitions as in NVlabs stylegan2-ada-pytorch `training/loss.py` (`StyleGAN2Loss.accumulate_gradients`):
- G:  softplus(-D(G(z)))                            (= -log sigmoid D(G(z)))
- D:  softplus(D(G(z))) + softplus(-D(x))
- R1: gamma/2 * ||grad_x D(x)||^2 per real image
- PL: (|J_w^T y| - a)^2 with y ~ N(0, I) / sqrt(H W), |.| the L2 norm over w_dim averaged over the
  num_ws latents before the sqrt, and a the running mean of the lengths (decay 0.01).
Each returns `(total, {name: value})` with per-sample values averaged; the caller multiplies lazily
applied penalties by their interval (NVlabs' `gain`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def generator_logistic_loss(fake_logits: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Non-saturating G loss, mean over the batch; `fake_logits` [B, 1]."""
    loss = F.softplus(-fake_logits).mean()
    return loss, {"g_adversarial": loss.detach()}


def discriminator_logistic_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """Logistic D loss: real pushed up, fake pushed down; both terms averaged over their batch."""
    real_term, fake_term = F.softplus(-real_logits).mean(), F.softplus(fake_logits).mean()
    total = real_term + fake_term
    return total, {"d_adversarial": total.detach(), "d_real_logit": real_logits.detach().mean(),
                   "d_fake_logit": fake_logits.detach().mean()}


def r1_penalty(
    real_logits: torch.Tensor, real_images: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, dict]:
    """gamma/2 * E ||d D(x) / d x||^2, with a graph through the gradient so that D can be trained on it.

    `real_images` [B, C, H, W] must be the tensor `real_logits` [B, 1] was computed from, with requires_grad.
    """
    (gradients,) = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_images], create_graph=True)
    penalty = gradients.square().sum(dim=[1, 2, 3])  # [B]
    total = penalty.mean() * (gamma / 2)
    return total, {"d_r1_penalty": penalty.detach().mean()}


def path_length_penalty(
    images: torch.Tensor,       # [B, C, H, W] generated from ...
    ws: torch.Tensor,           # ... these latents [B, num_ws, w_dim] (part of the graph)
    pl_mean: torch.Tensor,      # running mean of the path lengths, a scalar buffer updated in place
    weight: float = 2.0,
    decay: float = 0.01,
    noise: torch.Tensor | None = None,  # the random image-space direction y (drawn here when None)
) -> tuple[torch.Tensor, dict]:
    """weight * E (|J_w^T y| - a)^2; updates `pl_mean` to a.lerp(mean length, decay) as NVlabs does."""
    if noise is None:
        noise = torch.randn_like(images)
    noise = noise / math.sqrt(images.shape[2] * images.shape[3])
    (gradients,) = torch.autograd.grad(outputs=[(images * noise).sum()], inputs=[ws], create_graph=True)
    lengths = gradients.square().sum(dim=2).mean(dim=1).sqrt()  # [B]
    target = pl_mean.lerp(lengths.mean(), decay)  # not detached: NVlabs lets the 1% share carry gradient
    pl_mean.copy_(target.detach())
    penalty = (lengths - target).square()  # [B]
    return penalty.mean() * weight, {"g_pl_penalty": penalty.detach().mean(), "g_pl_mean": target.detach()}
