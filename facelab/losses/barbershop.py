"""Barbershop's loss terms (Zhu et al. 2021; ZPdesu/Barbershop), each per item `[B]` so that a batch of
transfers is a batch of independent searches. The official code runs one image at a time; where its
formula pools over the batch (a mask sum, a Gram matrix of `N * C` rows) the per-item form here is what it
computes at batch size 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from facelab.metrics.perceptual import PerceptualDistance
from facelab.ops.latent_pca import LatentPCA


def p_norm(latents: torch.Tensor, pca: LatentPCA) -> torch.Tensor:
    """PULSE's P-norm prior as Barbershop uses it (models/Net.py `cal_p_norm_loss`, without its weight):
    the mean square of the PCA-whitened LeakyReLU(5) of each W+ vector. `latents` `[B, N, w_dim]` -> `[B]`."""
    inverted = F.leaky_relu(latents, negative_slope=5.0)  # undoes the mapping's last LeakyReLU(0.2)
    whitened = (inverted - pca.mean) @ pca.components.T / pca.stdev  # [B, N, w_dim]
    return whitened.pow(2).flatten(1).mean(1)


def mse_per_item(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`[B, ...]` -> `[B]` mean squared error (`nn.MSELoss` at batch size 1)."""
    return (prediction - target).pow(2).flatten(1).mean(1)


def lpips_features(net: PerceptualDistance, images: torch.Tensor) -> list[torch.Tensor]:
    """A fixed target's LPIPS features (`[B, 3, H, W]` in [-1, 1]), computed once per search."""
    with torch.no_grad():
        return net.unit_features((images + 1) / 2)


def lpips_per_item(
    net: PerceptualDistance, prediction: torch.Tensor, target_features: list[torch.Tensor]
) -> torch.Tensor:
    """Differentiable LPIPS of `[B, 3, H, W]` images in [-1, 1] to a target's `lpips_features` -> `[B]`."""
    distances = net.distances_to((prediction + 1) / 2, target_features)
    return torch.stack([d.mean(dim=(1, 2, 3)) for d in distances]).sum(0)


def embedding_loss(
    image: torch.Tensor,  # [B, 3, R, R] generated, in [-1, 1]
    target: torch.Tensor,  # [B, 3, R, R] the photo
    image_low: torch.Tensor,  # [B, 3, r, r] the generated image bicubic-downsampled to the LPIPS size
    target_features: list[torch.Tensor],  # lpips_features of the photo's LANCZOS copy at that size
    ws: torch.Tensor,  # [B, num_ws, w_dim] the latent (all rows)
    lpips_net: PerceptualDistance,
    pca: LatentPCA,
    weights: dict,
) -> dict[str, torch.Tensor]:
    """Barbershop's embedding loss (losses/embedding_loss.py + Net.cal_p_norm_loss): MSE at full
    resolution, LPIPS-VGG at the low size, the P-norm prior; each weighted, each `[B]`."""
    return {
        "mse": weights["mse"] * mse_per_item(image, target),
        "lpips": weights["lpips"] * lpips_per_item(lpips_net, image_low, target_features),
        "p_norm": weights["p_norm"] * p_norm(ws, pca.to(ws.device)),
    }


def masked_lpips(
    net: PerceptualDistance,
    prediction: torch.Tensor,  # [B, 3, H, W] in [-1, 1]
    target_features: list[torch.Tensor],  # lpips_features of the [B, 3, H, W] target
    mask: torch.Tensor,  # [B, 1, H, W], 1 = compared
    blocks: Sequence[int] = (1, 2, 3),
) -> torch.Tensor:
    """Barbershop's masked LPIPS (losses/masked_lpips `PNetLin.forward` with `vgg_blocks`): at each of the
    trunk depths `blocks` (1-based), the lin-weighted distance map summed over the mask resized (nearest) to
    that depth, divided by the mask's sum there. `[B]`. An empty mask contributes 0 (the official divides by
    zero)."""
    distances = net.distances_to((prediction + 1) / 2, target_features)
    total = prediction.new_zeros(prediction.shape[0])
    for depth in blocks:
        distance = distances[depth - 1]  # [B, 1, h, w]
        resized = F.interpolate(mask, size=distance.shape[-2:], mode="nearest")
        area = resized.sum(dim=(1, 2, 3))
        total = total + (distance * resized).sum(dim=(1, 2, 3)) / area.clamp_min(1)
    return total


def gram(features: torch.Tensor) -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, C, C]`, divided by C * H * W (losses/style/style_loss.py `gram_matrix`)."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


def masked_style(
    target_features: Sequence[torch.Tensor],  # the reference's VGG taps (no gradient needed)
    prediction_features: Sequence[torch.Tensor],  # the generated image's taps
    target_mask: torch.Tensor,  # [B, 1, H, W] hair region of the reference
    prediction_mask: torch.Tensor,  # [B, 1, H, W] hair region of the generated image
) -> torch.Tensor:
    """Barbershop's masked style loss (losses/style/style_loss.py `cal_style`): per tap, the features times
    the mask resized (nearest) to it, Gram matrices, their mean squared difference; averaged over taps. `[B]`
    without the weight (4e4 in the official align_loss)."""
    total = 0.0
    for target, prediction in zip(target_features, prediction_features, strict=True):
        target_gram = gram(target * F.interpolate(target_mask, size=target.shape[-2:], mode="nearest"))
        prediction_gram = gram(
            prediction * F.interpolate(prediction_mask, size=prediction.shape[-2:], mode="nearest")
        )
        total = total + (target_gram - prediction_gram).pow(2).flatten(1).mean(1)
    return total / len(target_features)


def parsing_cross_entropy(
    logits: torch.Tensor,  # [B, C, H, W] parser output for the generated image
    target: torch.Tensor,  # long [B, H, W]
    class_weight: torch.Tensor | None = None,  # [C]
) -> torch.Tensor:
    """`nn.CrossEntropyLoss(weight=class_weight)` per item: the weighted mean over the item's pixels,
    sum(w_y * nll) / sum(w_y). `[B]`. Barbershop's alignment uses it plain, its mask filling with the
    background's weight 0 ("without background") or all other weights 0 ("only background")."""
    nll = F.cross_entropy(logits, target, reduction="none")  # [B, H, W]
    if class_weight is None:
        return nll.flatten(1).mean(1)
    weights = class_weight[target]  # [B, H, W]
    return (weights * nll).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1e-12)
