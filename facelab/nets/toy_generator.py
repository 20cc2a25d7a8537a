"""A tiny fixed random generator: the stand-in for a pretrained StyleGAN2 in tests of latent-fit jobs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ToyGenerator(nn.Module):
    """latent `[B, latent_dim]` -> image `[B, 3, size, size]` in [-1, 1]: linear, 4x bilinear up, 3x3 conv.

    Its weights are a function of `seed` alone, so every process builds the same "pretrained" network
    without a weight file; it has no batch statistics, so each item's image depends on its latent only.
    """

    def __init__(self, latent_dim: int = 32, size: int = 16, channels: int = 8, seed: int = 0):
        super().__init__()
        if size % 4:
            raise ValueError(f"ToyGenerator size must be a multiple of 4, got {size}.")
        self.latent_dim, self.size, self.channels = latent_dim, size, channels
        self.fc = nn.Linear(latent_dim, channels * (size // 4) ** 2)
        self.conv = nn.Conv2d(channels, 3, kernel_size=3, padding=1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer, fan_in in ((self.fc, latent_dim), (self.conv, channels * 9)):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(fan_in))
                layer.bias.zero_()

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        assert latents.ndim == 2 and latents.shape[1] == self.latent_dim, latents.shape
        features = self.fc(latents).view(-1, self.channels, self.size // 4, self.size // 4)
        features = F.interpolate(features, scale_factor=4, mode="bilinear", align_corners=False)
        return torch.tanh(self.conv(features))  # [B, 3, size, size]
