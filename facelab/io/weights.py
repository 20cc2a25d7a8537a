"""Pretrained weight files (metric networks, the VGG16 of the losses): where they are looked for, and the
error when they are not.

Nothing is downloaded. A file is taken from an explicit path (a config key) or from the torch cache,
`$TORCH_HOME/hub/checkpoints/` (`~/.cache/torch/hub/checkpoints/` by default), where `torch.hub` and
torchvision would have put it. A missing file raises `MissingWeightsError`, naming the file, the folder it
was looked for in and the address it is published at, so the run stops at start-up, not after an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class WeightsFile:
    """A published weight file: its name(s) in the torch cache and where to download it."""

    filename: str
    url: str
    used_by: str
    also_accepted: tuple[str, ...] = ()  # other cache names holding the same tensors

    @property
    def filenames(self) -> tuple[str, ...]:
        return (self.filename, *self.also_accepted)


# torchvision's ImageNet classifiers, the LPIPS backbones (the same files `lpips` and torchmetrics download).
ALEXNET = WeightsFile(
    "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "LPIPS (alex)"
)
VGG16 = WeightsFile(
    "vgg16-397923af.pth",
    "https://download.pytorch.org/models/vgg16-397923af.pth",
    "The VGG16 perceptual / style losses, LPIPS (vgg) and the VGG perceptual distance",
)
# The FID Inception (TF 2015-12-05 graph converted to PyTorch). torch-fidelity (and torchmetrics through it)
# publish it under the first name, pytorch-fid under the second; both use torchvision's Inception3 key names.
INCEPTION_FID = WeightsFile(
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "FID / KID (InceptionV3 pool3)",
    also_accepted=("pt_inception-2015-12-05-6726825d.pth",),
)
PYTORCH_FID_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file that a metric needs is not on this machine."""


def torch_checkpoint_dir() -> Path:
    """`$TORCH_HOME/hub/checkpoints`, read at call time so that a changed TORCH_HOME is honoured."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def locate_weights(spec: WeightsFile, explicit_path: str | Path | None = None, setting: str = "") -> Path:
    """The file to load for `spec`: `explicit_path` if given, else the first of its names in the cache."""
    how_to_point = f" or set `{setting}` to its path" if setting else ""
    if explicit_path:
        path = Path(explicit_path).expanduser()
        if path.is_file():
            return path
        given_as = f" as `{setting}`" if setting else ""
        raise MissingWeightsError(
            f"{spec.used_by} needs the weight file {str(path)!r} (given explicitly{given_as}), which "
            f"does not exist. It is {spec.filename!r}, published at {spec.url}."
        )
    folder = torch_checkpoint_dir()
    for name in spec.filenames:
        if (folder / name).is_file():
            return folder / name
    names = " or ".join(repr(n) for n in spec.filenames)
    extra = f" (pytorch-fid's copy: {PYTORCH_FID_URL})" if spec is INCEPTION_FID else ""
    raise MissingWeightsError(
        f"{spec.used_by} needs the pretrained weight file {names}, which is not in {folder} "
        f"(the torch cache, $TORCH_HOME/hub/checkpoints). Nothing is downloaded: fetch {spec.url}{extra} "
        f"on a machine with internet and copy it into {folder}{how_to_point}."
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved with `torch.save`, on the CPU (tensors only, no pickled code)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__}).")
    return state
