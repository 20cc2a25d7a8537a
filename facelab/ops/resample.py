"""Image resampling as the reference methods do it.

`bicubic_downsample` is the PULSE / Barbershop `BicubicDownSample` (utils/bicubic.py in ZPdesu/Barbershop):
a separable Keys cubic kernel (a = -0.5) of 4 x factor taps centred between pixels, normalised to sum 1,
applied with stride `factor` after reflect padding of 3 x factor pixels (split floor / ceil). Unlike
`F.interpolate(mode="bicubic")` it low-passes before decimating, and at factor 1 it still blurs (its four
taps sit at +-0.5 and +-1.5 px). Barbershop runs it on every generated image it compares (1024 -> 512 for
the parser, -> 256 for LPIPS and the style loss).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def cubic_kernel(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (a = -0.5, as Barbershop's utils/bicubic.py)."""
    x = x.abs()
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def bicubic_taps(factor: int) -> torch.Tensor:
    """The 1-D kernel of `bicubic_downsample`: 4 x factor taps, normalised to sum 1."""
    size = 4 * factor
    positions = (torch.arange(size, dtype=torch.float64) - math.floor(size / 2) + 0.5) / factor
    taps = cubic_kernel(positions)
    return (taps / taps.sum()).float()


def bicubic_downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, C, H / factor, W / factor]` by Barbershop's BicubicDownSample."""
    if factor < 1 or images.shape[-1] % factor or images.shape[-2] % factor:
        raise ValueError(
            f"bicubic_downsample: factor {factor} must divide the size {tuple(images.shape[-2:])}."
        )
    channels = images.shape[1]
    taps = bicubic_taps(factor).to(images)
    pad = 4 * factor - factor
    before, after = pad // 2, pad - pad // 2
    vertical = taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    horizontal = taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    x = F.pad(images, (0, 0, before, after), mode="reflect")
    x = F.conv2d(x, vertical, stride=(factor, 1), groups=channels)
    x = F.pad(x, (before, after, 0, 0), mode="reflect")
    return F.conv2d(x, horizontal, stride=(1, factor), groups=channels)


def downsample_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """`bicubic_downsample` by the factor that takes square `images` to `size`."""
    resolution = images.shape[-1]
    if resolution % size:
        raise ValueError(f"Cannot downsample {resolution} px images to {size} px by an integer factor.")
    return bicubic_downsample(images, resolution // size)


def lanczos_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """`[B, 3, H, W]` in [-1, 1] -> `[B, 3, size, size]` by PIL's LANCZOS on the uint8 image, as Barbershop
    loads its 256 px reference (utils/image_utils.py `load_image(downsample=True)`)."""
    out = []
    for image in images.detach().cpu():
        array = ((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        resized = np.asarray(Image.fromarray(array).resize((size, size), Image.LANCZOS), dtype=np.float32)
        out.append(torch.from_numpy(resized).permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(out).to(images.device)
