"""LPIPS (Zhang et al. 2018) with AlexNet or VGG16 trunks, and the uncalibrated VGG distance, offline.

The computation is LPIPS v0.1 as the `lpips` package defines it: inputs scaled to [-1, 1] and shifted /
scaled per channel, the trunk's ReLU outputs at five depths, each unit-normalised over channels, squared
differences weighted by the calibrated 1x1 "lin" layers, averaged over space and summed over depths.
With `calibrated=False` the lin layers are replaced by a plain channel sum, which is
`lpips.LPIPS(lpips=False)` (the paper's "baseline" distance); with the VGG trunk it is the "VGG"
perceptual distance reported next to LPIPS in reconstruction tables.

Weights: the trunk comes from torchvision's ImageNet checkpoint in the torch cache (or an explicit path,
see `weights.py`); the lin layers come from the files the `lpips` wheel ships (`lpips/weights/v0.1/`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from facelab.io.weights import ALEXNET, VGG16, load_state_dict, locate_weights

# Indices into torchvision's `features` at which LPIPS taps the trunk (after relu1..relu5 of each net).
TRUNK_SLICES = {
    "alex": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
    "vgg": ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
}
TRUNK_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
TRUNK_WEIGHTS = {"alex": ALEXNET, "vgg": VGG16}
# lpips.ScalingLayer: ImageNet statistics expressed for [-1, 1] inputs.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORMALISE_EPS = 1e-10  # lpips.normalize_tensor


def lpips_linear_weights_path(net: str) -> Path:
    """The calibrated lin-layer weights shipped inside the installed `lpips` wheel."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "LPIPS needs the `lpips` package for its calibrated linear weights "
            "(a project dependency: run `uv sync`)."
        )
    return Path(spec.origin).parent / "weights" / "v0.1" / f"{net}.pth"


def trunk_features(net: str, weights_path: str | Path | None = None) -> nn.Sequential:
    """torchvision's AlexNet / VGG16 `features` with the ImageNet weights from the torch cache."""
    if net not in TRUNK_SLICES:
        raise ValueError(f"LPIPS net {net!r}: choose one of {tuple(TRUNK_SLICES)}.")
    setting = "weights.alexnet" if net == "alex" else "weights.vgg16"
    path = locate_weights(TRUNK_WEIGHTS[net], weights_path, setting=setting)
    state = load_state_dict(path)
    # The checkpoint holds the whole classifier; only the convolutional trunk is used.
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    # Built on the meta device: no time spent initialising weights (and a classifier) that are replaced.
    with torch.device("meta"):
        trunk = (models.alexnet if net == "alex" else models.vgg16)(weights=None).features
    trunk.load_state_dict(features, assign=True)
    return trunk


class PerceptualDistance(nn.Module):
    """`forward(prediction, target)` on `[B, 3, H, W]` in [0, 1] -> `[B]` LPIPS (or uncalibrated) distance."""

    def __init__(
        self,
        net: str = "alex",
        calibrated: bool = True,
        weights_path: str | Path | None = None,
        linear_weights_path: str | Path | None = None,
    ):
        super().__init__()
        self.net, self.calibrated = net, calibrated
        trunk = trunk_features(net, weights_path)
        self.slices = nn.ModuleList(
            nn.Sequential(*[trunk[i] for i in range(start, stop)]) for start, stop in TRUNK_SLICES[net]
        )
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.linear = None
        if calibrated:
            self.linear = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TRUNK_CHANNELS[net])
            state = load_state_dict(Path(linear_weights_path or lpips_linear_weights_path(net)))
            # lpips names them lin{i}.model.1.weight (model.0 is a dropout that eval mode disables).
            for index, layer in enumerate(self.linear):
                layer.weight.data.copy_(state[f"lin{index}.model.1.weight"])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualDistance:
        """Always in eval mode: a metric network never trains (and Lightning may call .train())."""
        return super().train(False)

    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        features, hidden = [], (images * 2 - 1 - self.shift) / self.scale
        for block in self.slices:
            hidden = block(hidden)
            features.append(hidden)
        return features

    def unit_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's taps of `[B, 3, H, W]` images in [0, 1], each unit-normalised over channels."""
        return [
            f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + NORMALISE_EPS) for f in self._taps(images.float())
        ]

    def distances_to(
        self, prediction: torch.Tensor, target_features: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per depth, the weighted squared difference to a target's `unit_features`, `[B, 1, h_k, w_k]`
        (differentiable; a search against a fixed target computes the target's features once)."""
        distances = []
        for depth, (first, second) in enumerate(
            zip(self.unit_features(prediction), target_features, strict=True)
        ):
            squared = (first - second).pow(2)
            if self.linear is not None:
                distances.append(self.linear[depth](squared))
            else:
                distances.append(squared.sum(dim=1, keepdim=True))
        return distances

    def layer_distances(self, prediction: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        """Per depth, the weighted squared difference of unit-normalised features, `[B, 1, h_k, w_k]`
        (differentiable; LPIPS is the sum over depths of their spatial means). Inputs in [0, 1]."""
        if prediction.shape != target.shape or prediction.shape[1] != 3:
            raise ValueError(
                f"LPIPS compares two [B, 3, H, W] images, got {tuple(prediction.shape)} and "
                f"{tuple(target.shape)}."
            )
        # One pass over both images: half the kernel launches of two calls.
        features = self.unit_features(torch.cat([prediction, target]))
        first, second = zip(*(f.chunk(2) for f in features), strict=True)
        distances = []
        for depth, (a, b) in enumerate(zip(first, second, strict=True)):
            squared = (a - b).pow(2)
            distances.append(
                self.linear[depth](squared) if self.linear is not None else squared.sum(dim=1, keepdim=True)
            )
        return distances

    @torch.no_grad()
    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        distances = self.layer_distances(prediction, target)
        return torch.stack([d.mean(dim=(1, 2, 3)) for d in distances]).sum(0)
