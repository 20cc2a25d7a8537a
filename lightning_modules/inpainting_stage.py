"""One GAN stage of the inpainting cascade (a generator and the discriminator that judges it), the loading of
checkpoints written before the stages became objects, and the guide chosen by config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from facelab.losses.adversarial import AdversarialLoss
from facelab.ops.guides import GUIDES, Guide, make_guide

STAGE_NAMES = ("shape", "inpaint")  # stage 1 (G_H, D_H) and stage 2 (G_I, D_I), in optimiser order


class GANStage(nn.Module):
    """A generator and its discriminator. The discriminator runs in float32 even under autocast: it is the
    cheap half of a stage, and its spectral-norm sigma and logits feed every GAN loss."""

    def __init__(self, name: str, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.name = name  # the log prefix: train/<name>_g_l1, train/<name>_d_adversarial
        self.generator = generator
        self.discriminator = discriminator

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:  # x [B, C, H, W] -> logits [B, 1, h, w]
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.discriminator(x.float())[0]

    def discriminator_loss(self, adversarial: AdversarialLoss, real: torch.Tensor, fake: torch.Tensor):
        """D's loss on a real and a generated batch (the generated one detached: this step trains D)."""
        return adversarial.discriminator(self.discriminate(real), self.discriminate(fake.detach()))

    def generator_adversarial(self, adversarial: AdversarialLoss, fake: torch.Tensor) -> torch.Tensor:
        """G's adversarial loss, judged by D as it is after its own step (the DCGAN order)."""
        return adversarial.generator(self.discriminate(fake))


def guide_from_config(guide) -> Guide:
    """The guide of `model.guide` (a config node `{kind, options...}` from conf/model/guide/)."""
    if not isinstance(guide, Mapping):
        # `model.guide=edge` sets a value where the config group belongs (`model/guide=edge`).
        raise ValueError(
            f"model.guide={guide!r} is not a guide config. The guide is the config group model/guide "
            f"(conf/model/guide/): choose it with model/guide=<{'|'.join(sorted(GUIDES))}>, e.g. "
            "`facelab-train model/guide=edge`."
        )
    return make_guide(**guide)


def stages_for(mode: str, guide_kind: str, modes: tuple[str, ...]) -> tuple[str, ...]:
    """The stage names a mode builds: stage 1 needs a guide to predict."""
    if mode not in modes:
        raise ValueError(f"model.mode={mode!r}; choose one of {modes}.")
    if guide_kind == "none":
        if mode in ("shape", "cascade", "joint"):
            raise ValueError(
                f"model.mode={mode!r} needs a guide to predict, but model.guide.kind='none'. "
                "Use mode 'inpaint' or 'both' for plain inpainting."
            )
        return ("inpaint",)
    return {"shape": ("shape",), "inpaint": ("inpaint",)}.get(mode, STAGE_NAMES)


# ---------------------------------------------------------------- checkpoints written before GANStage
# Before, each network was an attribute `<stage>_<role>` (`shape_generator.*`), the networks were built
# from a `networks` dict inside the module and the optimisers from `optim: {lr, betas, d2g_lr}`.
_OLD_PREFIXES = {
    f"{stage}_{role}.": f"{stage}_stage.{role}."
    for stage in STAGE_NAMES
    for role in ("generator", "discriminator")
}


def upgrade_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State-dict keys of either layout in today's (`shape_generator.x` -> `shape_stage.generator.x`)."""
    upgraded = {}
    for key, value in state.items():
        old = next((prefix for prefix in _OLD_PREFIXES if key.startswith(prefix)), None)
        upgraded[_OLD_PREFIXES[old] + key[len(old):] if old else key] = value
    return upgraded


def upgrade_hyperparameters(saved: dict, model_yaml: Path) -> dict:
    """Hyper-parameters of a checkpoint of either layout in today's. Keys an old checkpoint lacks (the stage
    and optimiser configs, the speed switches) come from the model YAML (`model_yaml`), whose stage configs
    then interpolate the checkpoint's own `networks` sizes; the values it has (sizes, losses, rates) win."""
    if "optim" not in saved:
        return dict(saved)
    defaults = OmegaConf.load(model_yaml)
    for key in ("defaults", "_target_", "_recursive_"):
        defaults.pop(key, None)
    config = OmegaConf.merge(defaults, {k: v for k, v in saved.items() if k != "optim"})
    old_optim = saved["optim"]
    for role, scale in (("generator", 1.0), ("discriminator", old_optim["d2g_lr"])):
        config.optimizers[role].lr = old_optim["lr"] * scale  # EdgeConnect's D2G_LR, as the old code did
        config.optimizers[role].betas = list(old_optim["betas"])
    return OmegaConf.to_container(config, resolve=True)
