"""A frozen VGG16 conv trunk with named ReLU taps, for the perceptual and style losses.

The layout is torchvision's `vgg16().features` (13 3x3 convs, ReLU after each, 2x2 max-pools between the five
stages), so torchvision's ImageNet file `vgg16-397923af.pth` loads into it. The weights are never
downloaded: this code runs on machines without internet, and a silent 528 MB download in the middle of a
training job is worse than a clear error at start-up (`vgg16_weights_path`).

Input convention: images in [-1, 1]. EdgeConnect fed its VGG19 [0, 1] images without ImageNet mean/std
normalisation; torchvision's weights were trained on normalised inputs, so we map [-1, 1] -> [0, 1] and
normalise, which keeps the features in the range the filters were trained for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from facelab.io.weights import VGG16, torch_checkpoint_dir

VGG16_WEIGHTS_FILE = VGG16.filename
VGG16_WEIGHTS_URL = VGG16.url
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's VGG16 configuration "D": conv widths per stage, a max-pool closing each stage.
_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _layout() -> tuple[dict[str, int], dict[int, tuple[int, int]]]:
    """(ReLU name -> index in `features`, conv index -> (in, out) channels), following torchvision's order."""
    taps, convs, index, channels = {}, {}, 0, 3
    for stage, widths in enumerate(_STAGES, start=1):
        for number, width in enumerate(widths, start=1):
            convs[index] = (channels, width)
            taps[f"relu{stage}_{number}"] = index + 1
            index, channels = index + 2, width
        index += 1  # the max-pool
    return taps, convs


LAYER_INDEX, _CONV_CHANNELS = _layout()
LAYERS = tuple(LAYER_INDEX)  # relu1_1, relu1_2, relu2_1, ..., relu5_3


def default_vgg16_weights_path() -> Path:
    """Where torchvision caches the file: `torch.hub.get_dir()/checkpoints/` ($TORCH_HOME/hub/checkpoints)."""
    return torch_checkpoint_dir() / VGG16_WEIGHTS_FILE


def vgg16_weights_path(weights_path: str | Path | None = None) -> Path:
    """The VGG16 weights file to use (`weights_path`, else torch.hub's cache); FileNotFoundError if absent."""
    default = default_vgg16_weights_path()
    path = Path(weights_path).expanduser() if weights_path is not None else default
    if not path.is_file():
        raise FileNotFoundError(
            f"VGG16 weights not found at {path}. The perceptual and style losses need torchvision's "
            f"ImageNet VGG16 weights, and facelab never downloads them. Download {VGG16_WEIGHTS_URL} "
            f"(on a machine with internet) and put it in {default.parent}/ (torch.hub's checkpoint "
            f"directory, $TORCH_HOME/hub/checkpoints), or pass its location as weights_path (in the configs: "
            f"model.losses.vgg_weights=/path/to/{VGG16_WEIGHTS_FILE}). Or set the perceptual and style "
            f"loss weights to 0."
        )
    return path


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for index, (c_in, c_out) in _CONV_CHANNELS.items():
        shapes[f"features.{index}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"features.{index}.bias"] = (c_out,)
    return shapes


def load_vgg16_features_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision VGG16 state dict, checked; ValueError on any mismatch."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated download, a pickled model, not a torch file at all
        raise ValueError(f"{path} could not be read as a VGG16 state dict: {error}") from error
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict (expected torchvision's "
                         f"{VGG16_WEIGHTS_FILE}, keys features.N.weight/bias and classifier.*).")
    expected = _expected_shapes()
    # The classifier is torchvision's too but unused here; anything else means another network's file.
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in state if k not in expected and not k.startswith("classifier."))
    wrong_shape = sorted(f"{k}: {tuple(state[k].shape)} instead of {shape}"
                         for k, shape in expected.items() if k in state and tuple(state[k].shape) != shape)
    if missing or unexpected or wrong_shape:
        raise ValueError(f"{path} is not torchvision's VGG16 state dict ({VGG16_WEIGHTS_FILE}): "
                         f"missing keys {missing}, unexpected keys {unexpected}, wrong shapes {wrong_shape}.")
    return {k: state[k] for k in expected}


class VGG16Features(nn.Module):
    """Frozen ImageNet VGG16 trunk run up to the deepest requested ReLU; forward -> {layer: feature map}."""

    def __init__(self, layers: Sequence[str], weights_path: str | Path | None = None,
                 imagenet_input: bool = True):
        super().__init__()
        # False: images enter as they are, as Barbershop's style loss feeds its VGG16 [-1, 1] images.
        self.imagenet_input = imagenet_input
        layers = tuple(dict.fromkeys(layers))
        unknown = [name for name in layers if name not in LAYER_INDEX]
        if not layers or unknown:
            raise ValueError(f"VGG16Features layers {list(layers)}: unknown {unknown}; "
                             f"choose from {list(LAYERS)}.")
        self.layers = layers
        self.weights_path = vgg16_weights_path(weights_path)
        self._tap_at = {LAYER_INDEX[name]: name for name in layers}
        depth = max(self._tap_at) + 1
        modules: list[nn.Module] = []
        for index in range(depth):
            if index in _CONV_CHANNELS:
                modules.append(nn.Conv2d(*_CONV_CHANNELS[index], 3, padding=1))
            elif index - 1 in _CONV_CHANNELS:
                # In-place is safe for a tap: the module after a ReLU (conv or pool) never writes its input.
                modules.append(nn.ReLU(inplace=True))
            else:
                modules.append(nn.MaxPool2d(2, 2))
        # Same name and indices as torchvision's `features`: its file's keys load unchanged.
        self.features = nn.Sequential(*modules)
        state = load_vgg16_features_state(self.weights_path)
        self.load_state_dict({k: v for k, v in state.items() if int(k.split(".")[1]) < depth})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Features:
        """Always eval: a frozen feature extractor must not change with the owner's train/eval switch."""
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> ImageNet-normalised input."""
        return ((images + 1) * 0.5 - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # images [B, 3, H, W] in [-1, 1]
        x = self.normalize(images) if self.imagenet_input else images
        out = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self._tap_at:
                out[self._tap_at[index]] = x
        return out
