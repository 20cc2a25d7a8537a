"""StyleGAN2 residual discriminator (config E/F, `architecture='resnet'`) with NVlabs parameter names.

Arithmetic and state-dict keys follow NVlabs stylegan2-ada-pytorch `training/networks.py`
(`Conv2dLayer`, `DiscriminatorBlock`, `MinibatchStdLayer`, `DiscriminatorEpilogue`, `Discriminator`, c_dim=0),
so a D of an NVlabs snapshot fits `load_state_dict(strict=True)`. Blocks `b{res}` run from the image
resolution down to 8; `b4` is the epilogue (minibatch stddev, conv, fc, out). Float32 only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facelab.nets.stylegan2 import FullyConnectedLayer
from facelab.nets.stylegan2_ops import LRELU_GAIN, bias_linear, bias_lrelu, fir_filter, setup_filter


def downsample_conv2d(x: torch.Tensor, weight: torch.Tensor, resample_filter: torch.Tensor,
                      padding: int) -> torch.Tensor:
    """Blur with the FIR filter, then a stride-2 convolution (NVlabs conv2d_resample, down=2).

    x: [B, C, H, W] -> [B, O, H/2, W/2]. A 1x1 kernel downsamples first (keep every 2nd pixel of the
    blurred image) and convolves after, as NVlabs' fast path for 1x1 kernels does.
    """
    taps, kernel = resample_filter.shape[-1], weight.shape[-1]
    pad0 = padding + (taps - 2 + 1) // 2  # NVlabs: px0 += (fw - down + 1) // 2
    pad1 = padding + (taps - 2) // 2      # NVlabs: px1 += (fw - down) // 2
    x = fir_filter(x, resample_filter, (pad0, pad1))
    if kernel == 1:
        return F.conv2d(x[:, :, ::2, ::2], weight)
    return F.conv2d(x, weight, stride=2)


class Conv2dLayer(nn.Module):
    """Equalised-lr conv (weight gain 1/sqrt(fan_in)), optional 2x downsampling, bias, lrelu or linear."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: float | None = None,
                 resample_filter: tuple[float, ...] = (1, 3, 3, 1)):
        super().__init__()
        assert activation in ("linear", "lrelu") and down in (1, 2)
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        weight = self.weight * self.weight_gain
        if self.down == 2:
            x = downsample_conv2d(x, weight, self.resample_filter, self.padding)
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        bias = self.bias if self.bias is not None else x.new_zeros(x.shape[1])
        if self.activation == "lrelu":
            return bias_lrelu(x, bias, gain=LRELU_GAIN * gain, clamp=clamp)
        return bias_linear(x * gain, bias * gain, clamp=clamp)  # NVlabs bias_act: (x + b) * gain


class DiscriminatorBlock(nn.Module):
    """One resolution of the residual D: (fromrgb), conv0, conv1 (down), plus a 1x1 `skip` (down);
    both branches scaled by sqrt(0.5) so the sum keeps unit variance."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int,
                 img_channels: int, conv_clamp: float | None = None):
        super().__init__()
        assert in_channels in (0, tmp_channels), "a block's input width is 0 (first block) or tmp_channels"
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.register_buffer("resample_filter", setup_filter((1, 3, 3, 1)))
        lrelu = dict(activation="lrelu", conv_clamp=conv_clamp)
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, **lrelu)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, **lrelu)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, down=2, **lrelu)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(
        self,
        x: torch.Tensor | None,  # [B, in_channels, res, res], None for the first block
        img: torch.Tensor,       # [B, img_channels, res, res], read by the first block only
    ) -> torch.Tensor:           # [B, out_channels, res/2, res/2]
        if self.in_channels == 0:
            expected = (self.img_channels, self.resolution, self.resolution)
            assert img.shape[1:] == expected, f"D block {self.resolution}: image {tuple(img.shape)}"
            x = self.fromrgb(img)
        assert x.shape[2:] == (self.resolution,) * 2, f"D block {self.resolution}: x {tuple(x.shape)}"
        shortcut = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return shortcut + x


class MinibatchStdLayer(nn.Module):
    """Appends the mean stddev over groups of `group_size` samples as `num_channels` extra features.

    Sample i belongs to group i % (N / G) (NVlabs reshapes [N] to [G, N/G]), so the batch size must be a
    multiple of the group size whenever it is larger than the group.
    """

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C + num_channels, H, W]
        n, c, h, w = x.shape
        group = n if self.group_size is None else min(self.group_size, n)
        if n % group:
            raise ValueError(f"Minibatch-stddev group size {group} does not divide the batch size {n}: "
                             "make the per-device batch a multiple of model.discriminator.mbstd_group_size.")
        f = self.num_channels
        y = x.reshape(group, -1, f, c // f, h, w)  # [G, n, F, c, H, W]
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over each group [n, F, c, H, W]
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n, F]
        y = y.reshape(-1, f, 1, 1).repeat(group, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head `b4`: minibatch stddev, 3x3 conv, fc, and `out` to one logit per image."""

    def __init__(self, in_channels: int, resolution: int = 4, mbstd_group_size: int | None = 4,
                 mbstd_num_channels: int = 1, conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.mbstd = None
        if mbstd_num_channels > 0:
            self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, 4, 4] -> [B, 1]
        expected = (self.in_channels, self.resolution, self.resolution)
        assert x.shape[1:] == expected, f"D epilogue: x {tuple(x.shape)}"
        if self.mbstd is not None:
            x = self.mbstd(x)
        return self.out(self.fc(self.conv(x).flatten(1)))


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: image [B, img_channels, R, R] in [-1, 1] -> logits [B, 1]."""

    def __init__(
        self,
        img_resolution: int = 1024,         # Input resolution, a power of two >= 8.
        img_channels: int = 3,
        channel_base: int = 32768,          # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max: int = 512,
        mbstd_group_size: int | None = 4,   # Minibatch-stddev group; None = the whole minibatch.
        mbstd_num_channels: int = 1,        # Stddev features appended; 0 disables the layer.
        conv_clamp: float | None = None,    # NVlabs uses 256 with fp16 layers; None in float32.
    ):
        super().__init__()
        assert img_resolution >= 8 and img_resolution & (img_resolution - 1) == 0, "resolution: a power of 2"
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.config = dict(img_resolution=img_resolution, img_channels=img_channels,
                           channel_base=channel_base, channel_max=channel_max,
                           mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels,
                           conv_clamp=conv_clamp)
        self.block_resolutions = [2**i for i in range(int(math.log2(img_resolution)), 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in [*self.block_resolutions, 4]}
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_channels, channels[res], channels[res // 2], res, img_channels,
                                       conv_clamp=conv_clamp)
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(channels[4], mbstd_group_size=mbstd_group_size,
                                        mbstd_num_channels=mbstd_num_channels, conv_clamp=conv_clamp)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Real/fake logits [B, 1] for images [B, img_channels, R, R]."""
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img.to(torch.float32))
        return self.b4(x)
