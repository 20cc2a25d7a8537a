"""EdgeConnect's perceptual and style losses on frozen VGG16 features.

Perceptual: sum over layers of w_l * mean |phi_l(pred) - phi_l(target)|. Style: sum over layers of
mean |G(phi_l(pred)) - G(phi_l(target))| with the Gram matrix G = F F^T / (C H W). EdgeConnect uses VGG19
(relu1_1..relu5_1 perceptual, relu2_2/3_4/4_4/5_2 style); the HOG paper uses VGG16 relu1_1..relu4_1 for both.

EdgeConnect computes the style term on `pred * mask` vs `target * mask` (hole only). In our [-1, 1] images
the zeroed known region is mid-grey, which the ImageNet normalisation maps close to 0: near the black (0)
input EdgeConnect's unnormalised VGG saw there.

The VGG is a child module so it follows the owner's device, but these losses do not manage its weights: the
owner keeps it out of checkpoints and optimisers (`facelab.nets.frozen.register_frozen`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from facelab.nets.vgg import VGG16Features


def gram_matrix(features: torch.Tensor) -> torch.Tensor:  # features [B, C, H, W] -> [B, C, C]
    """Per-image Gram matrix F F^T / (C H W) of a feature map, at least in float32."""
    b, c, h, w = features.shape
    # A Gram entry sums H*W products: in half precision it overflows and loses the small differences.
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.reshape(b, c, h * w)
        if flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()
        return flat @ flat.transpose(1, 2) / (c * h * w)


def _check_layers(vgg: VGG16Features, layers: Sequence[str], what: str) -> tuple[str, ...]:
    layers = tuple(layers)
    missing = [name for name in layers if name not in vgg.layers]
    if not layers or missing:
        raise ValueError(f"{what} layers {list(layers)}: the VGG16Features does not tap {missing}; "
                         f"it taps {list(vgg.layers)}.")
    return layers


def _layer_weights(layers: tuple[str, ...], weights: Sequence[float] | None) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * len(layers)  # EdgeConnect: 1 for every layer
    if len(weights) != len(layers):
        raise ValueError(f"{len(weights)} layer weights for {len(layers)} layers {list(layers)}.")
    return tuple(float(w) for w in weights)


def perceptual_distance(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                        layers: Sequence[str], weights: Sequence[float]) -> torch.Tensor:
    """sum_l w_l * mean |pred_l - target_l| over precomputed features."""
    return sum(w * F.l1_loss(pred[name], target[name]) for name, w in zip(layers, weights, strict=True))


def style_distance(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                   layers: Sequence[str]) -> torch.Tensor:
    """sum_l mean |G(pred_l) - G(target_l)| over precomputed features."""
    return sum(F.l1_loss(gram_matrix(pred[name]), gram_matrix(target[name])) for name in layers)


class _VGGLoss(nn.Module):
    """Shared plumbing: the VGG child and feature extraction that only tracks gradients where needed."""

    def __init__(self, vgg: VGG16Features):
        super().__init__()
        self.vgg = vgg

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # images [B, 3, H, W] in [-1, 1]
        """VGG features; run without autograd when `images` needs no gradient (the ground truth)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and images.requires_grad):
            return self.vgg(images)


class PerceptualLoss(_VGGLoss):
    """EdgeConnect's perceptual (content) loss: weighted L1 between VGG features of pred and target."""

    def __init__(self, vgg: VGG16Features, layers: Sequence[str],
                 layer_weights: Sequence[float] | None = None):
        super().__init__(vgg)
        self.layers = _check_layers(vgg, layers, "PerceptualLoss")
        self.layer_weights = _layer_weights(self.layers, layer_weights)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] in [-1, 1]
        pred_features, target_features = self.features(pred), self.features(target)
        return perceptual_distance(pred_features, target_features, self.layers, self.layer_weights)


class StyleLoss(_VGGLoss):
    """EdgeConnect's style loss: L1 between Gram matrices of VGG features of pred and target."""

    def __init__(self, vgg: VGG16Features, layers: Sequence[str]):
        super().__init__(vgg)
        self.layers = _check_layers(vgg, layers, "StyleLoss")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] in [-1, 1]
        return style_distance(self.features(pred), self.features(target), self.layers)


class PerceptualStyleLoss(_VGGLoss):
    """Both losses from one VGG pass per side; given a mask, style compares `pred*mask` with `target*mask`."""

    def __init__(self, vgg: VGG16Features, perceptual_layers: Sequence[str], style_layers: Sequence[str],
                 perceptual_weights: Sequence[float] | None = None):
        super().__init__(vgg)
        self.perceptual_layers = _check_layers(vgg, perceptual_layers, "PerceptualStyleLoss perceptual")
        self.style_layers = _check_layers(vgg, style_layers, "PerceptualStyleLoss style")
        self.perceptual_weights = _layer_weights(self.perceptual_layers, perceptual_weights)

    def _both(self, images: torch.Tensor, mask: torch.Tensor | None):
        """(features of images, features of images*mask): one batched VGG pass, or one pass without a mask."""
        if mask is None:
            full = self.features(images)
            return full, full
        both = self.features(torch.cat([images, images * mask]))
        halves = {name: f.chunk(2) for name, f in both.items()}
        return {n: h[0] for n, h in halves.items()}, {n: h[1] for n, h in halves.items()}

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(perceptual, style) of pred/target `[B, 3, H, W]` in [-1, 1]; mask `[B, 1, H, W]`, 1 = hole."""
        pred_full, pred_masked = self._both(pred, mask)
        target_full, target_masked = self._both(target, mask)
        perceptual = perceptual_distance(pred_full, target_full, self.perceptual_layers,
                                         self.perceptual_weights)
        return perceptual, style_distance(pred_masked, target_masked, self.style_layers)
