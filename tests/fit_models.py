"""Tiny random stand-ins for the pretrained networks of the latent fits, saved in the real file formats:
a StyleGAN2 generator (facelab's own format, or an NVlabs-style pickle via the converter's tests), a BiSeNet
state dict as Barbershop's seg.pth, torchvision's VGG16 file (LPIPS trunk and style loss)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg16

from facelab.nets.bisenet import BiSeNet
from facelab.nets.stylegan2 import Generator
from facelab.nets.stylegan2_checkpoints import save_generator

TINY_GENERATOR = dict(z_dim=32, w_dim=32, img_resolution=64, channel_base=512, channel_max=32)


def tiny_generator(seed: int = 0, **overrides) -> Generator:
    """A 64 px StyleGAN2 with random weights (and a non-zero w_avg, as a trained one has)."""
    torch.manual_seed(seed)
    generator = Generator(**{**TINY_GENERATOR, **overrides}).eval()
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith("noise_strength"):
                parameter.fill_(0.05)
        z = torch.randn(512, generator.z_dim)
        generator.mapping.w_avg.copy_(generator.mapping(z)[:, 0].mean(0))
    return generator


def save_tiny_generator(path: Path, seed: int = 0) -> Path:
    save_generator(tiny_generator(seed), path)
    return path


def save_random_bisenet(path: Path, n_classes: int = 16, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = BiSeNet(n_classes=n_classes).eval()
    torch.save(net.state_dict(), path)
    return path


def save_random_vgg16(path: Path, seed: int = 0) -> Path:
    """torchvision's vgg16 layout with He-initialised random conv weights (the file the torch cache holds)."""
    with torch.device("meta"):
        features = vgg16(weights=None).features
    features = features.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            fan_in = layer.weight[0].numel()
            layer.weight.data.normal_(0, (2 / fan_in) ** 0.5, generator=generator)
            layer.bias.data.normal_(0, 0.01, generator=generator)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path
