"""The toy latent fit: find per item the latent whose image under a fixed random generator matches the item's
(downsampled) image. It exercises the fit-job machinery (manifests, shards, records, resume) in seconds."""

from __future__ import annotations

import torch

from facelab.nets.frozen import register_frozen
from facelab.nets.toy_generator import ToyGenerator
from lightning_modules.latent_fit import LatentFit


class ToyFit(LatentFit):
    """Per item: MSE(generator(latent), image) + `latent_weight` * |latent|^2."""

    image_outputs = ("render",)

    def __init__(
        self,
        optimizer,
        latent_dim: int = 32,
        image_size: int = 16,
        generator_seed: int = 0,
        init_scale: float = 0.1,
        latent_weight: float = 1e-3,
        init_seed: int = 0,
    ):
        super().__init__(optimizer, init_seed)
        self.init_scale, self.latent_weight = init_scale, latent_weight
        self.generator = None
        register_frozen(self, "generator", ToyGenerator(latent_dim, image_size, seed=generator_seed))

    def init_latents(self, batch: dict) -> torch.Tensor:
        dim = self.generator.latent_dim
        starts = [torch.randn(dim, generator=g) * self.init_scale for g in self.item_generators(batch)]
        return torch.stack(starts)  # [B, latent_dim]

    def render(self, latents: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        return {"render": self.generator(latents)}  # [B, 3, S, S]

    def item_losses(self, rendered: dict, latents: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        image = batch["image"]  # [B, 3, S, S]
        assert rendered["render"].shape == image.shape, (rendered["render"].shape, image.shape)
        mse = (rendered["render"] - image).pow(2).flatten(1).mean(1)  # over one item's pixels only
        return {"mse": mse, "latent_l2": self.latent_weight * latents.pow(2).sum(1)}
