"""The toy latent fit: find per item the latent whose image under a fixed random generator matches the item's
(downsampled) image. It exercises the fit-job machinery (manifests, shards, stages, records, resume) in
seconds, in two stages: `coarse` fits the latent, `refine` fits a residual image on top of it."""

from __future__ import annotations

import torch

from facelab.nets.frozen import register_frozen
from facelab.nets.toy_generator import ToyGenerator
from lightning_modules.latent_fit import Latent, LatentFit


class ToyFit(LatentFit):
    """coarse: MSE(generator(latent), image) + `latent_weight` |latent|^2, an item stopping once its MSE is
    under `stop_mse` (if set); refine: the coarse latent fixed, a per-pixel residual fitted to what it leaves,
    kept in [-`residual_bound`, bound], and the MSE gain over the stage's start (a per-item state)."""

    image_outputs = {"coarse": ("render",), "refine": ("render",)}

    def __init__(
        self,
        stages,
        latent_dim: int = 32,
        image_size: int = 16,
        generator_seed: int = 0,
        init_scale: float = 0.1,
        latent_weight: float = 1e-3,
        residual_bound: float = 0.25,
        stop_mse: float | None = None,
        init_seed: int = 0,
    ):
        super().__init__(stages, init_seed)
        self.init_scale, self.latent_weight, self.residual_bound = init_scale, latent_weight, residual_bound
        self.stop_mse = stop_mse
        self.generator = None
        register_frozen(self, "generator", ToyGenerator(latent_dim, image_size, seed=generator_seed))

    def init_latents(self, stage: str, batch: dict) -> dict[str, Latent]:
        if stage == "coarse":
            dim = self.generator.latent_dim
            starts = [torch.randn(dim, generator=g) * self.init_scale for g in self.item_generators(batch)]
            return {"latent": Latent(torch.stack(starts).to(self.device))}  # [B, latent_dim]
        latent = batch["previous"]["coarse"]["latent"]  # [B, latent_dim], fixed in this stage
        return {
            "latent": Latent(latent, trainable=False),
            "residual": Latent(torch.zeros_like(batch["image"])),
        }

    def init_item_state(self, stage: str, batch: dict) -> dict[str, torch.Tensor]:
        if stage != "refine":
            return {}
        latents = {"latent": batch["previous"]["coarse"]["latent"]}
        return {"start_mse": self.item_losses(stage, latents, batch)["mse"]}  # [B], not a parameter

    def render(self, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.generator(latents["latent"])  # [B, 3, S, S]
        return image + latents["residual"] if "residual" in latents else image

    def item_losses(self, stage: str, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        image, render = batch["image"], self.render(latents)  # [B, 3, S, S]
        assert render.shape == image.shape, (render.shape, image.shape)
        mse = (render - image).pow(2).flatten(1).mean(1)  # over one item's pixels only
        if stage == "coarse":
            return {"mse": mse, "latent_l2": self.latent_weight * latents["latent"].pow(2).sum(1)}
        return {"mse": mse}

    def stop_items(self, stage: str, latents: dict, batch: dict, terms: dict) -> torch.Tensor | None:
        if stage != "coarse" or self.stop_mse is None:
            return None
        return terms["mse"] < self.stop_mse  # [B]

    def project(self, stage: str, latents: dict) -> None:
        if "residual" in latents:
            latents["residual"].clamp_(-self.residual_bound, self.residual_bound)

    def stage_outputs(self, stage: str, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        outputs = {**latents, "render": self.render(latents)}
        if stage == "refine":
            outputs["mse_gain"] = self.state("start_mse") - self.item_losses(stage, latents, batch)["mse"]
        return outputs
