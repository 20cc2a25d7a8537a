"""StyleGAN2 training (Karras et al. 2020) as NVlabs stylegan2-ada-pytorch runs it, without ADA.

One training step is NVlabs' one iteration (`training/training_loop.py`): the phases Gmain, Greg (every
`g_reg_interval` batches), Dmain, Dreg (every `d_reg_interval`), in that order, each with its own
latents, then the EMA of G. Lazy regularisation: a penalty applied every k batches is multiplied by k, and
Adam's lr and betas are scaled by k / (k + 1) (lr * r, beta ** r) to keep the same effective momentum.
Style mixing, `w_avg` tracking (what truncation, Barbershop and DragGAN start from) and the EMA follow
`training/loss.py`, `training/networks.py` and the training loop. G_ema is what gets exported.

Every random number of a step comes from a generator seeded by (seed, rank, step), so a fit resumed from
any checkpoint continues exactly as an uninterrupted one. The checkpoint holds G, G_ema, D, the path-length
mean, the image counter and both optimisers; `export_generator` writes G_ema in facelab's own format.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

from facelab.io.images import save_image, to_uint8
from facelab.losses.stylegan2 import (
    discriminator_logistic_loss,
    generator_logistic_loss,
    path_length_penalty,
    r1_penalty,
)
from facelab.nets.stylegan2 import Generator
from facelab.nets.stylegan2_checkpoints import save_generator
from facelab.nets.stylegan2_discriminator import Discriminator

LOSS_DEFAULTS = dict(r1_gamma=10.0, style_mixing_prob=0.9, pl_weight=2.0, pl_batch_shrink=2, pl_decay=0.01,
                     w_avg_beta=0.995)
OPTIM_DEFAULTS = dict(lr=0.002, betas=(0.0, 0.99), eps=1e-8, g_reg_interval=4, d_reg_interval=16)
EMA_DEFAULTS = dict(half_life_kimg=10.0, rampup=None)


def lazy_adam_settings(lr: float, betas, reg_interval: int | None) -> tuple[float, tuple[float, float]]:
    """Adam lr and betas corrected for lazy regularisation: with ratio r = k / (k + 1), lr * r, beta ** r."""
    if not reg_interval:
        return lr, tuple(betas)
    ratio = reg_interval / (reg_interval + 1)
    return lr * ratio, tuple(beta**ratio for beta in betas)


def ema_beta(batch_size: int, images_seen: float, half_life_kimg: float, rampup: float | None) -> float:
    """G_ema keeps this fraction per step: 0.5 ** (batch / half-life in images), the half-life capped by
    `rampup * images_seen` early in training when a ramp-up is set."""
    half_life = half_life_kimg * 1000
    if rampup is not None:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers (w_avg, noise) are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def seed_latents(seeds, z_dim: int) -> torch.Tensor:
    """z [len(seeds), z_dim] with NVlabs gen_images.py's convention (RandomState(seed).randn), so seed s
    is the same face in facelab's grids and NVlabs' tools."""
    return torch.from_numpy(np.stack([np.random.RandomState(int(s)).randn(z_dim) for s in seeds])).float()


class StyleGAN2Training(pl.LightningModule):
    """G, D and G_ema with NVlabs' phases, lazy R1 / path-length regularisation, style mixing and EMA."""

    def __init__(self, generator: dict, discriminator: dict | None = None, loss: dict | None = None,
                 optim: dict | None = None, ema: dict | None = None, sample_seeds=tuple(range(16)),
                 seed: int = 0, export_path: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.loss_config = {**LOSS_DEFAULTS, **(loss or {})}
        self.optim_config = {**OPTIM_DEFAULTS, **(optim or {})}
        self.ema_config = {**EMA_DEFAULTS, **(ema or {})}
        self.generator = Generator(**generator)
        self.discriminator = Discriminator(img_resolution=self.generator.img_resolution,
                                           img_channels=self.generator.img_channels, **(discriminator or {}))
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.register_buffer("pl_mean", torch.zeros([]))
        self.register_buffer("images_seen", torch.zeros([], dtype=torch.long))  # NVlabs cur_nimg
        self.register_buffer("batches_done", torch.zeros([], dtype=torch.long))  # NVlabs batch_idx

    def configure_optimizers(self):
        """Adam for G and for D (NVlabs G_opt_kwargs / D_opt_kwargs), lazily corrected per network."""
        config, optimizers = self.optim_config, []
        for network, interval in ((self.generator, config["g_reg_interval"]),
                                  (self.discriminator, config["d_reg_interval"])):
            lr, betas = lazy_adam_settings(config["lr"], config["betas"], interval)
            optimizers.append(torch.optim.Adam(network.parameters(), lr=lr, betas=betas, eps=config["eps"]))
        return optimizers

    # ----------------------------------------------------------------- generator
    def run_generator(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-time G (NVlabs StyleGAN2Loss.run_G): track w_avg, mix styles, random noise.
        z [B, z_dim] -> images [B, C, H, W], ws [B, num_ws, w_dim]."""
        mapping, num_ws = self.generator.mapping, self.generator.num_ws
        ws = mapping(z)
        with torch.no_grad():  # NVlabs MappingNetwork in training: w_avg <- mean(w).lerp(w_avg, beta)
            mapping.w_avg.copy_(ws[:, 0].mean(dim=0).lerp(mapping.w_avg, self.loss_config["w_avg_beta"]))
        if self.loss_config["style_mixing_prob"] > 0:
            # One cutoff for the whole batch, as NVlabs draws it; the second z's w does not move w_avg.
            cutoff = int(torch.randint(1, num_ws, []))
            if float(torch.rand([])) >= self.loss_config["style_mixing_prob"]:
                cutoff = num_ws
            if cutoff < num_ws:
                ws = torch.cat([ws[:, :cutoff], mapping(torch.randn_like(z))[:, cutoff:]], dim=1)
        return self.generator.synthesis(ws, noise_mode="random"), ws

    # ----------------------------------------------------------------- training
    def _step_seed(self) -> int:
        """The seed of this rank's current step: a resumed fit draws exactly the numbers it would have."""
        words = [self.hparams.seed, self.global_rank, int(self.batches_done)]
        return int(np.random.SeedSequence(words).generate_state(1)[0])

    def _update(self, optimizer, network: torch.nn.Module, loss: torch.Tensor) -> None:
        """One optimiser step on `loss`; NaN / inf gradients are zeroed or clipped to +-1e5 as NVlabs does."""
        self.toggle_optimizer(optimizer)  # only this network's parameters collect gradients
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        for param in network.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=param.grad)
        optimizer.step()
        self.untoggle_optimizer(optimizer)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real = batch["image"]  # [B, C, H, W] in [-1, 1]
        batch_size, z_dim = real.shape[0], self.generator.z_dim
        g_opt, d_opt = self.optimizers()
        devices = [real.device] if real.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._step_seed())
            logs = self._phases(real, torch.randn([4, batch_size, z_dim], device=real.device), g_opt, d_opt)
        global_batch = batch_size * self.trainer.world_size
        beta = ema_beta(global_batch, int(self.images_seen), self.ema_config["half_life_kimg"],
                        self.ema_config["rampup"])
        update_ema(self.generator_ema, self.generator, beta)
        self.images_seen += global_batch
        self.batches_done += 1
        logs["ema_beta"] = torch.tensor(beta)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True, on_epoch=False,
                      batch_size=batch_size)
        kimg = self.images_seen.double() / 1000
        self.log("train/kimg", kimg, on_step=True, prog_bar=True, batch_size=batch_size)

    def _phases(self, real: torch.Tensor, zs: torch.Tensor, g_opt, d_opt) -> dict:
        """Gmain, Greg, Dmain, Dreg, one latent batch each (zs [4, B, z_dim]); returns the logged parts."""
        loss, optim, step = self.loss_config, self.optim_config, int(self.batches_done)
        g_interval, d_interval = optim["g_reg_interval"], optim["d_reg_interval"]
        do_pl = loss["pl_weight"] != 0 and (not g_interval or step % g_interval == 0)
        do_r1 = loss["r1_gamma"] != 0 and (not d_interval or step % d_interval == 0)
        logs = {}

        fake, _ = self.run_generator(zs[0])
        g_total, parts = generator_logistic_loss(self.discriminator(fake))
        logs.update(parts)
        if do_pl and not g_interval:  # NVlabs Gboth: one step on the sum
            pl_total, parts = self._path_length(zs[0])
            g_total = g_total + pl_total
            logs.update(parts)
        self._update(g_opt, self.generator, g_total)
        if do_pl and g_interval:  # lazy: its own step after Gmain's, times the interval (NVlabs gain)
            pl_total, parts = self._path_length(zs[1])
            logs.update(parts)
            self._update(g_opt, self.generator, pl_total * g_interval)

        with torch.no_grad():
            fake, _ = self.run_generator(zs[2])
        real_for_r1 = real.detach().requires_grad_(do_r1 and not d_interval)
        real_logits = self.discriminator(real_for_r1)
        d_total, parts = discriminator_logistic_loss(real_logits, self.discriminator(fake))
        logs.update(parts)
        if do_r1 and not d_interval:
            r1_total, parts = r1_penalty(real_logits, real_for_r1, loss["r1_gamma"])
            d_total = d_total + r1_total
            logs.update(parts)
        self._update(d_opt, self.discriminator, d_total)
        if do_r1 and d_interval:
            real_for_r1 = real.detach().requires_grad_(True)
            real_logits = self.discriminator(real_for_r1)
            r1_total, parts = r1_penalty(real_logits, real_for_r1, loss["r1_gamma"])
            logs.update(parts)
            # `real_logits * 0` keeps every D output in the graph, as NVlabs does for DDP's sake.
            self._update(d_opt, self.discriminator, r1_total * d_interval + real_logits.mean() * 0)
        return logs

    def _path_length(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Path-length penalty on a batch shrunk by pl_batch_shrink (NVlabs Gpl)."""
        shrunk = max(z.shape[0] // self.loss_config["pl_batch_shrink"], 1)
        fake, ws = self.run_generator(z[:shrunk])
        total, parts = path_length_penalty(fake, ws, self.pl_mean, weight=self.loss_config["pl_weight"],
                                           decay=self.loss_config["pl_decay"])
        return total + fake[:, 0, 0, 0].mean() * 0, parts  # every G output in the graph (DDP), as NVlabs

    # ----------------------------------------------------------------- validation
    @torch.no_grad()
    def sample(self, seeds, truncation_psi: float = 1.0) -> torch.Tensor:
        """G_ema images [len(seeds), C, H, W] of the given seeds, constant noise (reproducible)."""
        z = seed_latents(seeds, self.generator_ema.z_dim).to(self.device)
        return torch.cat([self.generator_ema(chunk, truncation_psi=truncation_psi, noise_mode="const")
                          for chunk in z.split(8)])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """D's mean logit on held-out real faces and on as many G_ema samples (seeds by item index)."""
        real = batch["image"]
        seeds = [10_000 + batch_idx * real.shape[0] + i for i in range(real.shape[0])]
        with torch.no_grad():
            real_logit = self.discriminator(real).mean()
            fake_logit = self.discriminator(self.sample(seeds)).mean()
        self.log("val/d_real_logit", real_logit, batch_size=real.shape[0], sync_dist=True)
        self.log("val/d_fake_logit", fake_logit, batch_size=real.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        """The fixed-seed sample grid `<run dir>/samples/seeds_step<S>.png`, and the G_ema export."""
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        seeds = list(self.hparams.sample_seeds)
        images = self.sample(seeds).clamp(-1, 1).cpu()  # [N, C, H, W]
        grid = make_grid(images, nrow=int(np.ceil(np.sqrt(len(seeds)))), padding=2, pad_value=1.0)
        path = Path(self.trainer.default_root_dir) / "samples" / f"seeds_step{self.global_step:07d}.png"
        save_image(to_uint8(grid), path)
        for logger in self.loggers:
            if type(logger).__name__ == "TensorBoardLogger":
                logger.experiment.add_image("val/seed_samples", grid.add(1).div(2), self.global_step)
        if self.hparams.export_path:
            save_generator(self.generator_ema, self.hparams.export_path)


def export_generator(checkpoint_path: str | Path, output_path: str | Path) -> Generator:
    """Write the G_ema of a StyleGAN2Training checkpoint in facelab's own format (`load_generator` reads
    it, `facelab-convert` rewrites it); returns that generator."""
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path} does not exist; give a StyleGAN2 training checkpoint "
                                "(<run dir>/checkpoints/last.ckpt).")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    hparams, state = checkpoint.get("hyper_parameters", {}), checkpoint.get("state_dict", {})
    prefix = "generator_ema."
    if "generator" not in hparams or not any(k.startswith(prefix) for k in state):
        raise ValueError(f"{checkpoint_path} is not a StyleGAN2Training checkpoint (no generator hparams or "
                         f"{prefix}* weights).")
    generator = Generator(**hparams["generator"])
    ema_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    generator.load_state_dict(ema_state, strict=True)
    save_generator(generator, output_path)
    return generator.eval().requires_grad_(False)
