"""BiSeNet face parsing (Yu et al. 2018), in the layout of zllrunning/face-parsing.PyTorch.

Barbershop's `models/face_parsing/model.py` is the same network (its `seg.pth` has 16 classes; the
CelebAMask-HQ `79999_iter.pth` of face-parsing.PyTorch has 19), so both state dicts load here with
strict=True. Like that repo, the separate spatial path of the paper is dropped: the ResNet-18's 1/8
feature (layer2, 128 channels) stands in for it and is fused with the context path's 1/8 feature.

The weights are never downloaded (`load_bisenet`). Images enter `parse` in [-1, 1]; the net itself
expects ImageNet-normalised [0, 1] images, as the reference repos feed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facelab.nets.vgg import IMAGENET_MEAN, IMAGENET_STD  # the statistics every torchvision backbone uses

WEIGHTS_SOURCES = (
    "zllrunning/face-parsing.PyTorch's 79999_iter.pth (19 CelebAMask-HQ classes) or "
    "Barbershop's pretrained_models/seg.pth (16 classes)"
)


class ConvBNReLU(nn.Module):
    """Bias-free convolution, batch norm, ReLU (`conv`, `bn`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN with an identity or 1x1 conv-BN (`downsample`) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """ResNet-18 trunk without the classifier; the 1/8, 1/16 and 1/32 features (w, 2w, 4w, 8w wide)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        w = width
        widths = ((w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2))
        for index, (c_in, c_out, stride) in enumerate(widths, start=1):
            layer = nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out))
            self.add_module(f"layer{index}", layer)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # [B, w, H/4, W/4]
        feat8 = self.layer2(self.layer1(x))  # [B, 2w, H/8, W/8]
        feat16 = self.layer3(feat8)  # [B, 4w, H/16, W/16]
        feat32 = self.layer4(feat16)  # [B, 8w, H/32, W/32]
        return feat8, feat16, feat32


class AttentionRefinementModule(nn.Module):
    """ARM: a conv, then channel attention from its global average (`conv_atten`, `bn_atten`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        attention = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))
        return feat * attention  # attention: [B, C, 1, 1]


class ContextPath(nn.Module):
    """Context path: ResNet-18, ARMs at 1/16 and 1/32, the global context (`conv_avg`), top-down heads."""

    def __init__(self, width: int = 64):
        super().__init__()
        w = width
        self.resnet = ResNet18(w)
        self.arm16 = AttentionRefinementModule(4 * w, 2 * w)
        self.arm32 = AttentionRefinementModule(8 * w, 2 * w)
        self.conv_head32 = ConvBNReLU(2 * w, 2 * w)
        self.conv_head16 = ConvBNReLU(2 * w, 2 * w)
        self.conv_avg = ConvBNReLU(8 * w, 2 * w, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(feat32.mean((2, 3), keepdim=True))  # [B, 2w, 1, 1], broadcast below
        up32 = F.interpolate(self.arm32(feat32) + context, feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)  # [B, 2w, H/16, W/16]
        up16 = F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest")
        up16 = self.conv_head16(up16)  # [B, 2w, H/8, W/8]
        return feat8, up16, up32


class FeatureFusionModule(nn.Module):
    """FFM: concat spatial and context features, 1x1 conv, squeeze-excite style reweighting plus identity."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, kernel_size=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))  # [B, C_out, H/8, W/8]
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * attention + feat


class BiSeNetOutput(nn.Module):
    """Segmentation head: 3x3 conv-BN-ReLU, then a bias-free 1x1 conv to class logits (`conv_out`)."""

    def __init__(self, in_channels: int, mid_channels: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels)
        self.conv_out = nn.Conv2d(mid_channels, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face-parsing BiSeNet: main head on the fused 1/8 feature, auxiliary heads on the context path.

    `width` is the ResNet's first width; 64 is the reference network (every pretrained file). A smaller one
    scales every channel count by width / 64 (facelab's shipped parser of the synthetic faces uses 32).
    """

    def __init__(self, n_classes: int = 19, width: int = 64):
        super().__init__()
        self.n_classes = n_classes
        self.width = width
        w = width
        self.cp = ContextPath(w)
        self.ffm = FeatureFusionModule(4 * w, 4 * w)
        self.conv_out = BiSeNetOutput(4 * w, 4 * w, n_classes)
        self.conv_out16 = BiSeNetOutput(2 * w, w, n_classes)
        self.conv_out32 = BiSeNetOutput(2 * w, w, n_classes)

    def forward(
        self, images: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits [B, n_classes, H, W] for ImageNet-normalised images [B, 3, H, W] (+ the two aux heads)."""
        size = images.shape[2:]
        feat8, context8, context16 = self.cp(images)
        fused = self.ffm(feat8, context8)  # [B, 4w, H/8, W/8]; layer2 plays the spatial path

        def upsample(logits: torch.Tensor) -> torch.Tensor:
            return F.interpolate(logits, size, mode="bilinear", align_corners=True)

        logits = upsample(self.conv_out(fused))
        if not return_aux:
            return logits
        return logits, upsample(self.conv_out16(context8)), upsample(self.conv_out32(context16))


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix that nn.DataParallel adds, if every key carries it."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def load_bisenet(path: str | Path, device: str | torch.device = "cpu") -> BiSeNet:
    """A BiSeNet in eval mode with the weights of `path`; the class count and width are read from the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"BiSeNet weights not found at {path}. Use {WEIGHTS_SOURCES}; facelab never downloads "
            "them, so fetch the file on a machine with internet and pass its location."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a BiSeNet state dict (got {type(state).__name__}).")
    state = _strip_module_prefix(state)
    head = state.get("conv_out.conv_out.weight")
    if head is None or head.ndim != 4:
        raise ValueError(f"{path} has no 'conv_out.conv_out.weight'; it is not a BiSeNet state dict.")
    stem = state.get("cp.resnet.conv1.weight")
    net = BiSeNet(n_classes=head.shape[0], width=64 if stem is None else stem.shape[0])
    expected = net.state_dict()
    for key in expected:  # files saved before PyTorch 0.4.1 lack these counters; they are not weights
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match facelab's BiSeNet layout: missing keys {missing}, "
            f"unexpected keys {unexpected}."
        )
    mismatched = [key for key, value in state.items() if value.shape != expected[key].shape]
    if mismatched:
        shapes = {key: (tuple(state[key].shape), tuple(expected[key].shape)) for key in mismatched}
        raise ValueError(f"{path} has tensors of the wrong shape (file, expected): {shapes}.")
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> [0, 1] -> ImageNet mean/std, as face-parsing.PyTorch and Barbershop feed BiSeNet."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


@torch.no_grad()
def parse(net: BiSeNet, images: torch.Tensor) -> torch.Tensor:
    """Per-pixel class labels, long [B, H, W], for images in [-1, 1] [B, 3, H, W] (no resizing here)."""
    return net(normalize(images)).argmax(dim=1)
