"""Pivotal Tuning Inversion's loss terms (Roich et al. 2021; danielroich/PTI), each per item `[B]`.

The official coach tunes one photo at a time (`train_batch_size = 1`); a batch here is B photos, each with
its own generator copy, and each term is what the official computes at batch size 1.
"""

from __future__ import annotations

import torch

from facelab.losses.barbershop import lpips_features, lpips_per_item, mse_per_item
from facelab.metrics.perceptual import PerceptualDistance


def reconstruction_terms(
    image: torch.Tensor,  # [B, 3, R, R] the tuned generator's image of the pivot, in [-1, 1]
    target: torch.Tensor,  # [B, 3, R, R] the photo, in [-1, 1]
    target_features: list[torch.Tensor],  # lpips_features of the photo
    lpips_net: PerceptualDistance,
    weights: dict,  # {"l2": pt_l2_lambda, "lpips": pt_lpips_lambda}
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(the weighted L2 and LPIPS terms, the unweighted LPIPS that the early stop compares) of
    base_coach.py `calc_loss`: MSE (criteria/l2_loss.py, a mean over pixels) and LPIPS at full resolution."""
    lpips = lpips_per_item(lpips_net, image, target_features)
    terms = {"l2": weights["l2"] * mse_per_item(image, target), "lpips": weights["lpips"] * lpips}
    return terms, lpips.detach()


def locality_ws(
    pivot: torch.Tensor,  # [B, num_ws, w_dim] each photo's pivot
    sampled: torch.Tensor,  # [B, num_ws, w_dim] a random latent per photo (mapping of z, truncation 0.5)
    alpha: float,
) -> torch.Tensor:
    """The locality regulariser's latent (criteria/localitly_regulizer.py `get_morphed_w_code`): the point at
    distance `alpha` from the pivot towards the sample, the distance an L2 norm over the whole W+ code."""
    direction = sampled - pivot
    norm = direction.flatten(1).norm(dim=1).view(-1, 1, 1)
    return pivot + alpha * direction / norm


def locality_terms(
    tuned: torch.Tensor,  # [B, 3, R, R] the tuned generators' images of locality_ws
    original: torch.Tensor,  # [B, 3, R, R] the frozen generator's images of the same latents
    lpips_net: PerceptualDistance,
    weights: dict,  # {"l2": regulizer_l2_lambda, "lpips": regulizer_lpips_lambda}
) -> dict[str, torch.Tensor]:
    """The locality regulariser (`ball_holder_loss_lazy` with one sample): the tuned generator must keep
    rendering latents away from the pivot as the original does."""
    lpips = lpips_per_item(lpips_net, tuned, lpips_features(lpips_net, original))
    return {
        "locality_l2": weights["l2"] * mse_per_item(tuned, original.detach()),
        "locality_lpips": weights["lpips"] * lpips,
    }
