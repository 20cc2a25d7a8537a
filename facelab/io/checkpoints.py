"""Reading a checkpoint file as data only (`torch.load(weights_only=True)`), with errors naming the file.

A checkpoint given on the command line may come from anywhere. torch's own refusal suggests retrying with
`weights_only=False` or allow-listing the refused class, i.e. running whatever code the pickle names: that
advice is right for a file one made oneself and wrong for one of unknown origin, so it is not passed on.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch


class UnreadableCheckpointError(ValueError):
    """A file that `torch.load(weights_only=True)` cannot read as a checkpoint."""


def _refusal_reason(error: Exception) -> str:
    """The one line of torch's message that says what it met (an opcode, a class), without its advice."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.|\n|$)", text, flags=re.DOTALL)
    if found:
        reason = found.group(1).strip()
        return reason or text.splitlines()[-1].strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'unreadable'}"


def load_checkpoint_dict(path: str | Path, map_location="cpu", what: str = "ckpt") -> dict:
    """The dict in a `torch.save` / Lightning checkpoint file; `what` is the config key that named it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}={str(path)!r} does not exist; give a .ckpt written by facelab-train."
        )
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, KeyError, RuntimeError... by kind of garbage
        raise UnreadableCheckpointError(
            f"{what}={str(path)!r} is not a checkpoint that can be read as data "
            f"({_refusal_reason(error)}). Give the .ckpt written by facelab-train "
            "(<run dir>/checkpoints/last.ckpt); files of unknown origin are never unpickled as code."
        ) from None  # torch's own message advises weights_only=False: not for a file of unknown origin
    if not isinstance(loaded, dict):
        raise UnreadableCheckpointError(
            f"{what}={str(path)!r} holds a {type(loaded).__name__}, not a checkpoint dict; give the .ckpt "
            "written by facelab-train (<run dir>/checkpoints/last.ckpt)."
        )
    return loaded
