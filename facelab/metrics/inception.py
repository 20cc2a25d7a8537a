"""The FID feature extractor: InceptionV3 as in the TF "2015-12-05" graph (pool3, 2048-d), offline.

The network is torchvision's Inception3 layout with the three changes that make it the TensorFlow FID
network (as pytorch-fid and torch-fidelity define it): average pools in the A, C and first E blocks ignore
the zero padding, the last E block pools with a max instead of an average, and the classifier has 1008
outputs. Its weights are the torch-fidelity / pytorch-fid file (`weights.INCEPTION_FID`).

Preprocessing decides whether FID numbers can be compared with a paper:
  pytorch_fid             float [0,1] -> bilinear resize to 299 (no antialias) -> 2x - 1. pytorch-fid, which
                          LaMa's evaluator and EdgeConnect's scripts/fid_score.py use. The default.
  torch_fidelity          8-bit -> TF1 bilinear resize (`resize_like_tf1`) -> (x - 128) / 128. torch-fidelity,
                          the original TF FID, and torchmetrics' FID with antialias=False (before 1.8).
  torchmetrics_antialias  8-bit -> antialiased bilinear resize -> (x - 128) / 128. torchmetrics >= 1.8's
                          default.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facelab.io.weights import INCEPTION_FID, load_state_dict, locate_weights

INPUT_SIZE = 299
PREPROCESSING = ("pytorch_fid", "torch_fidelity", "torchmetrics_antialias")


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, TF's), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_options):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_options)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _average_pool_unpadded(x):
    """TF's 3x3 average pool: the zero padding is not counted in the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_average_pool_unpadded(x)),
            ],
            dim=1,
        )


class InceptionB(nn.Module):
    """35 -> 17 reduction block."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            dim=1,
        )


class InceptionC(nn.Module):
    """17 x 17 block with factorised 7x7 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        double = x
        for index in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{index}")(double)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                double,
                self.branch_pool(_average_pool_unpadded(x)),
            ],
            dim=1,
        )


class InceptionD(nn.Module):
    """17 -> 8 reduction block."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat(
            [self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1
        )


class InceptionE(nn.Module):
    """8 x 8 block with split 1x3 / 3x1 branches; `pool="max"` is the TF graph's last block."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = (
            F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            if self.pool == "max"
            else _average_pool_unpadded(x)
        )
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(single),
                self.branch3x3_2b(single),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                self.branch_pool(pooled),
            ],
            dim=1,
        )


class FIDInceptionV3(nn.Module):
    """`forward(x)` on normalised `[N, 3, 299, 299]` -> `[N, 2048]` pool3 features."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c = InceptionA(192, 32), InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, pool="average"), InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)  # unused for FID; kept so the published state dict loads strictly

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def resize_like_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TF 1.x `resize_bilinear(align_corners=False)`: source = destination * in / out,
    with no half-pixel offset (torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x`)."""

    def axis(in_size: int):
        source = torch.arange(size, dtype=torch.float32, device=images.device) * (in_size / size)
        low = source.long()
        return low, (low + 1).clamp_max(in_size - 1), (source - low.float()).to(images.dtype)

    (top, bottom, dy), (left, right, dx) = axis(images.shape[2]), axis(images.shape[3])
    top_rows, bottom_rows = images[:, :, top], images[:, :, bottom]
    upper = top_rows[..., left] + (top_rows[..., right] - top_rows[..., left]) * dx
    lower = bottom_rows[..., left] + (bottom_rows[..., right] - bottom_rows[..., left]) * dx
    return upper + (lower - upper) * dy.view(-1, 1)


def preprocess(images: torch.Tensor, preprocessing: str = "pytorch_fid") -> torch.Tensor:
    """`[N, 3, H, W]` in [0, 1] -> the network's normalised 299 x 299 input."""
    if preprocessing == "pytorch_fid":
        resized = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return resized * 2 - 1
    levels = images.mul(255).round()  # the 8-bit image these tools are fed
    if preprocessing == "torch_fidelity":
        resized = resize_like_tf1(levels, INPUT_SIZE)
    elif preprocessing == "torchmetrics_antialias":
        resized = F.interpolate(
            levels, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
        )
    else:
        raise ValueError(f"FID preprocessing {preprocessing!r}: choose one of {PREPROCESSING}.")
    return (resized - 128) / 128


class InceptionFeatures(nn.Module):
    """The FID feature extractor: `[N, 3, H, W]` in [0, 1] -> `[N, 2048]`, weights from the torch cache."""

    num_features = 2048

    def __init__(self, weights_path: str | Path | None = None, preprocessing: str = "pytorch_fid"):
        super().__init__()
        if preprocessing not in PREPROCESSING:
            raise ValueError(f"FID preprocessing {preprocessing!r}: choose one of {PREPROCESSING}.")
        self.preprocessing = preprocessing
        self.network = FIDInceptionV3()
        path = locate_weights(INCEPTION_FID, weights_path, setting="weights.inception")
        load_inception_weights(self.network, path)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Always in eval mode (batch-norm statistics are part of the published network)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(preprocess(images.float(), self.preprocessing))


def load_inception_weights(network: FIDInceptionV3, path: Path) -> None:
    """Load a torch-fidelity / pytorch-fid Inception state dict (batch-norm step counters may be absent)."""
    state = load_state_dict(path)
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # older torchvision omitted them
    if missing or unexpected:
        raise ValueError(
            f"{path} is not the FID Inception state dict: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
