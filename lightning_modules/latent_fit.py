"""Optimisation-as-fit: a short `Trainer.fit` whose parameters are the latents of a batch of B items.

`LatentFit` owns the loop; a method (Barbershop, DragGAN, the toy fit) subclasses it and says only how to
start each item's latent, what to render from the latents and what each item's loss terms are. Frozen
networks are attached with `register_frozen`, so a fit checkpoint holds the latents (and Lightning's
optimiser state) only.

Items never interact: per-item losses are summed, not averaged, so each latent's gradient is exactly its
own item's gradient alone, and initial latents are seeded by item id, not by batch position. An item's
result therefore does not depend on which items share its batch or on which rank fits it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import LightningEnvironment, SLURMEnvironment
from torch import nn

from facelab.fit.records import item_seed


class LatentFit(pl.LightningModule):
    """Base of the latent searches; `image_outputs` names the rendered tensors saved as PNG per item."""

    image_outputs: tuple[str, ...] = ()

    def __init__(
        self, optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer], init_seed: int = 0
    ):
        super().__init__()
        self.optimizer_factory = optimizer  # a Hydra `_partial_` optimiser: the latents are its only params
        self.init_seed = init_seed
        self.register_parameter("latents", None)  # [B, ...] once a chunk is set up

    # What a method says --------------------------------------------------------------------------------
    def init_latents(self, batch: dict) -> torch.Tensor:
        """The starting latents of the batch's items, `[B, ...]`; use `item_generators` for random starts."""
        raise NotImplementedError

    def render(self, latents: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """What the frozen networks make of the latents, e.g. `{"render": [B, 3, H, W]}`."""
        raise NotImplementedError

    def item_losses(self, rendered: dict[str, torch.Tensor], latents: torch.Tensor, batch: dict) -> dict:
        """Each weighted loss term per item, `{name: [B]}`; an item's term must not depend on other items."""
        raise NotImplementedError

    # The loop --------------------------------------------------------------------------------------------
    def item_generators(self, batch: dict) -> list[torch.Generator]:
        """One CPU generator per item, seeded by (`init_seed`, item id)."""
        return [torch.Generator().manual_seed(item_seed(self.init_seed, i)) for i in batch["meta"]["item_id"]]

    def setup(self, stage: str) -> None:
        # Runs before Lightning restores a chunk checkpoint: the latents must exist, shaped, to load into.
        batch = self.trainer.datamodule.batch
        self.latents = nn.Parameter(self.init_latents(batch).detach().clone())

    def losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(rendered tensors, per-item loss terms plus their sum `total`, each `[B]`)."""
        rendered = self.render(self.latents, batch)
        terms = self.item_losses(rendered, self.latents, batch)
        batch_size = self.latents.shape[0]
        for name, value in terms.items():
            assert value.shape == (batch_size,), (
                f"loss term {name!r} must be per item [{batch_size}], got {value.shape}"
            )
        terms["total"] = torch.stack(list(terms.values())).sum(0)
        return rendered, terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        _, terms = self.losses(batch)
        self.log(
            "fit/loss_per_item", terms["total"].mean().detach(), prog_bar=True, batch_size=len(terms["total"])
        )
        return terms["total"].sum()  # a sum: each item's gradient is the one it would have alone

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory([self.latents])

    @torch.no_grad()
    def final_results(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(per-item outputs `{name: [B, ...]}`, per-item losses `{name: [B]}`) of the current latents."""
        rendered, terms = self.losses(batch)
        return {"latents": self.latents.detach(), **rendered}, terms


class IndependentSlurmEnvironment(SLURMEnvironment):
    """Slurm without Slurm's process group: every task of `srun -n N` fits its own items alone (world 1), so
    Lightning must neither count the tasks as DDP ranks nor insist on devices == N."""

    @staticmethod
    def _validate_srun_variables() -> None:
        return None

    def world_size(self) -> int:
        return 1

    def global_rank(self) -> int:
        return 0

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return 0

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        return None


def fit_cluster_environment():
    """The fit trainer's cluster environment: a lone process, under Slurm or not. Requeue on Slurm's signal is
    callbacks/preemption.py's (at a step boundary), so Lightning's own handler is off."""
    if "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return IndependentSlurmEnvironment(auto_requeue=False)
    return LightningEnvironment()
