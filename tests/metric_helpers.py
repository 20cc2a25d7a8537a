"""Shared test material for the metrics: random trunks saved in a temporary torch cache under the real file
names, a tiny deterministic feature extractor standing in for the FID Inception, and real photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skimage import data, transform
from torch import nn
from torchvision import models
from torchvision.models import vgg

from facelab.io.weights import ALEXNET, VGG16

TRUNKS = {"alex": (models.alexnet, ALEXNET), "vgg": (models.vgg16, VGG16)}


def random_trunk_state(net: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random torchvision AlexNet / VGG16 `features.*` state dict. The classifier is left out (it is large
    and the loader ignores it); one small classifier key checks that it is ignored."""
    torch.manual_seed(seed)
    # VGG16's features alone (its classifier takes seconds to initialise); AlexNet's whole model is quick.
    features = vgg.make_layers(vgg.cfgs["D"]) if net == "vgg" else models.alexnet(weights=None).features
    state = {f"features.{k}": v.clone() for k, v in features.state_dict().items()}
    state["classifier.1.bias"] = torch.zeros(4)
    return state


def seed_torch_cache(torch_home: Path, *nets: str) -> Path:
    """Write random trunks for `nets` into `<torch_home>/hub/checkpoints/` under torchvision's file names."""
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for seed, net in enumerate(nets):
        torch.save(random_trunk_state(net, seed), folder / TRUNKS[net][1].filename)
    return folder


class TinyFeatures(nn.Module):
    """A deterministic 16-d feature extractor: `[N, 3, H, W]` in [0, 1] -> `[N, 16]`."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.5)
            self.conv.bias.copy_(torch.randn(8, generator=generator) * 0.1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.conv(images * 2 - 1))
        return torch.cat([hidden.mean(dim=(2, 3)), hidden.std(dim=(2, 3))], dim=1)


def photographs(size: int = 64) -> torch.Tensor:
    """skimage's astronaut, coffee and camera (gray as RGB) resized to `size`: `[3, 3, size, size]` in [0, 1],
    rounded to 8 bits like the originals."""
    images = []
    for name in ("astronaut", "coffee", "camera"):
        image = getattr(data, name)()
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        resized = transform.resize(image, (size, size), anti_aliasing=True)
        images.append(torch.from_numpy(np.round(resized * 255) / 255).permute(2, 0, 1).float())
    return torch.stack(images)


def degrade(images: torch.Tensor, seed: int = 0, noise: float = 0.08) -> torch.Tensor:
    """Noisy, slightly shifted copies: a realistic imperfect prediction in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    noisy = images.roll(1, dims=-1) + noise * torch.randn(images.shape, generator=generator)
    return noisy.clamp(0, 1)


class MaskedImages(torch.utils.data.Dataset):
    """`length` random images (`[-1, 1]`) with rectangular holes whose ratios sweep the buckets."""

    def __init__(self, length: int, size: int = 32, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(length, 3, size, size, generator=generator) * 2 - 1
        self.masks = torch.zeros(length, 1, size, size)
        for index in range(length):
            rows = 2 + (index * 5) % (size - 4)  # hole ratios from ~0.06 to ~0.9
            self.masks[index, :, :rows, : size * 2 // 3] = 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "mask": self.masks[index], "meta": {"index": index}}
