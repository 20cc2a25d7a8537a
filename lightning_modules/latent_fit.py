"""Optimisation-as-fit: short `Trainer.fit`s whose parameters are the latents of a batch of B items.

A method (Barbershop, DragGAN, the toy fit) is a sequence of named **stages** (`stages` in its config, in
order, each with its own `steps` and `optimizer`). For one stage and one chunk of items the job
(facelab/fit/job.py) calls `begin_stage(stage, batch)` on the fit's device, then `Trainer.fit`; the method
says only:

- `init_latents(stage, batch)`: the stage's named latents `{name: Latent}`, e.g. W+ `[B, 18, 512]` with only
  rows 0-5 trainable, or F `[B, 512, 32, 32]` and S `[B, 11, 512]`; earlier stages' outputs are in
  `batch["previous"][stage][name]`;
- `init_item_state(stage, batch)`: per-item tensors that are not parameters (tracked points, initial
  features, targets derived from the inputs); kept as buffers, so they are saved in and restored from the
  chunk checkpoint, and handed back in `batch["state"]`;
- `item_losses(stage, latents, batch)`: each weighted loss term per item, `{name: [B]}` (`batch` holds only
  the items still being fitted: an item that stopped leaves the forward pass);
- optionally `project` (a constraint after each step, e.g. u in [0, 1]), `stop_items` (a per-item stopping
  rule), `after_step` (e.g. point tracking), and `stage_outputs` (what is saved per item).

Items never interact. Per-item losses are summed, not averaged, so each latent's gradient is its own item's
gradient alone; initial latents are seeded by item id; an item that meets its stopping rule is taken out of
the forward pass and its latents are restored after each optimiser step, so it stops changing while the
others go on (the chunk ends when all have stopped or at `steps`). An item's result therefore does not
depend on which items share its batch. Two optimiser settings would break this and are refused:
gradient clipping by a global norm (`trainer.gradient_clip_val`: one norm over all items' gradients) and
L-BFGS (its line search and curvature pairs mix every item's loss and gradient into one step length).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import LightningEnvironment, SLURMEnvironment
from torch import nn

from facelab.fit.records import item_seed

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class Latent:
    """A named latent of a stage: its start `value` `[B, ...]` and which rows (dim 1) the optimiser changes
    (`trainable=slice(0, 6)` for DragGAN's first 6 W+ vectors; True for all, False for none)."""

    value: torch.Tensor
    trainable: bool | slice = True


def index_batch(batch: dict, index: torch.Tensor, size: int | None = None) -> dict:
    """The items `index` of a batch dict of `size` items: tensors along dim 0, per-item lists (`meta`),
    nested dicts (earlier stages' outputs)."""
    size = len(batch_ids(batch)) if size is None else size
    picked, positions = {}, index.tolist()
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == size:
            picked[key] = value.index_select(0, index.to(value.device))
        elif isinstance(value, Mapping):
            picked[key] = index_batch(dict(value), index, size)
        elif isinstance(value, list) and len(value) == size:
            picked[key] = [value[i] for i in positions]
        else:
            picked[key] = value
    return picked


def batch_ids(batch: dict) -> list:
    """The item ids of a batch dict."""
    return list(batch["meta"]["item_id"]) if "meta" in batch else []


class LatentFit(pl.LightningModule):
    """Base of the latent searches. `image_outputs[stage]` names the stage outputs saved as PNG per item."""

    image_outputs: dict[str, tuple[str, ...]] = {}

    def __init__(
        self, stages: Mapping[str, Mapping], init_seed: int = 0, run_stages: list[str] | None = None
    ):
        super().__init__()
        self.automatic_optimization = False  # the step masks stopped items and projects: done by hand
        if not stages:
            raise ValueError(
                "A latent fit needs at least one stage (fit.module.stages: {name: {steps, ...}})."
            )
        unknown = sorted(set(run_stages or ()) - set(stages))
        if unknown:
            raise ValueError(f"run_stages names unknown stages {unknown}; the stages are {list(stages)}.")
        # run_stages: which stages run, in this order (e.g. only Barbershop's embeddings; DragGAN's photo
        # inversion before the drag); default: every configured stage in config order
        names = list(stages) if run_stages is None else list(run_stages)
        self.stage_settings = {name: dict(stages[name]) for name in names}
        for name, settings in self.stage_settings.items():
            if "steps" not in settings:
                raise ValueError(f"fit.module.stages.{name} has no `steps`.")
            if int(settings["steps"]) > 0 and settings.get("optimizer") is None:
                raise ValueError(f"fit.module.stages.{name} has steps but no `optimizer` (a _partial_).")
        self.init_seed = init_seed
        self.stage: str | None = None
        self.batch: dict | None = None  # the chunk's batch, on the fit's device (given by begin_stage)
        self.latent_names: list[str] = []
        self.state_names: list[str] = []
        self.curve_rows: list[dict] = []  # (item, step, term values) of this stage, for curves.csv
        self._fixed_features: dict[str, list[torch.Tensor]] = {}  # see fixed_features

    # What a method says --------------------------------------------------------------------------------
    def init_latents(self, stage: str, batch: dict) -> dict[str, Latent]:
        """The stage's named latents, each `[B, ...]` with its trainable rows (`item_generators` seeds)."""
        raise NotImplementedError

    def init_item_state(self, stage: str, batch: dict) -> dict[str, torch.Tensor]:
        """Per-item tensors `[B, ...]` that are not optimised (targets, tracked points, start features)."""
        return {}

    def item_losses(self, stage: str, latents: dict[str, torch.Tensor], batch: dict) -> dict:
        """Each weighted loss term per item, `{name: [B]}`, for the items of `batch` only."""
        raise NotImplementedError

    def project(self, stage: str, latents: dict[str, nn.Parameter]) -> None:
        """A constraint applied in place after each optimiser step (no grad)."""

    def stop_items(self, stage: str, latents: dict, batch: dict, terms: dict) -> torch.Tensor | None:
        """Bool `[B]`: the items whose stopping rule holds now; they get no update from this step on."""
        return None

    def after_step(self, stage: str, latents: dict[str, torch.Tensor], batch: dict) -> None:
        """Called after each optimiser step (no grad), with every item's latents."""

    def stage_outputs(self, stage: str, latents: dict[str, torch.Tensor], batch: dict) -> dict:
        """What is saved per item at the end of a stage, `{name: [B, ...]}`; by default the latents."""
        return dict(latents)

    def check_item(self, values: dict, source: str) -> None:
        """Raise a clear error (naming `source`, the manifest row) if an item cannot run; called for every
        item before any fitting starts."""

    def finish_item(self, values: dict, item_dir: Path) -> list[Path]:
        """After an item's last stage, before its done record: extra files (e.g. a paste-back into the
        original photo); returns the paths written."""
        return []

    # Stage set-up ---------------------------------------------------------------------------------------
    @property
    def stage_names(self) -> list[str]:
        return list(self.stage_settings)

    def stage_steps(self, stage: str) -> int:
        return int(self.stage_settings[stage]["steps"])

    def item_generators(self, batch: dict, stage: str = "") -> list[torch.Generator]:
        """One CPU generator per item, seeded by (`init_seed`, stage, item id)."""
        salt = f"{stage}:" if stage else ""
        return [torch.Generator().manual_seed(item_seed(self.init_seed, salt + i)) for i in batch_ids(batch)]

    @torch.no_grad()
    def begin_stage(self, stage: str, batch: dict) -> None:
        """Make the stage's latents and per-item state for `batch` (already on this module's device).
        Called by the job before `Trainer.fit`, so that a chunk checkpoint restores into them."""
        if stage not in self.stage_settings:
            raise KeyError(f"Unknown stage {stage!r}; this method's stages are {self.stage_names}.")
        self._clear_stage()
        self.stage, self.batch, self.curve_rows, self._fixed_features = stage, batch, [], {}
        size = len(batch_ids(batch))
        for name, latent in self.init_latents(stage, batch).items():
            value = latent.value.detach().clone()
            assert value.shape[0] == size, (
                f"latent {name!r}: [B={size}, ...] expected, got {tuple(value.shape)}"
            )
            rows = _trainable_rows(latent.trainable, value)
            self.register_buffer(f"fixed_{name}", value)
            self.register_parameter(f"latent_{name}", nn.Parameter(value[:, rows].clone()) if rows else None)
            setattr(self, f"_rows_{name}", rows)
            self.latent_names.append(name)
        for name, value in {**self.init_item_state(stage, batch), **self._bookkeeping(size)}.items():
            self.register_buffer(f"state_{name}", value.clone())
            self.state_names.append(name)

    def _bookkeeping(self, size: int) -> dict[str, torch.Tensor]:
        return {
            "stopped": torch.zeros(size, dtype=torch.bool, device=self.device),
            "steps_taken": torch.zeros(size, dtype=torch.long, device=self.device),
        }

    def _clear_stage(self) -> None:
        for name in self.latent_names:
            delattr(self, f"fixed_{name}")
            delattr(self, f"latent_{name}")
        for name in self.state_names:
            delattr(self, f"state_{name}")
        self.latent_names, self.state_names = [], []

    def state(self, name: str) -> torch.Tensor:
        """A per-item state buffer `[B, ...]` of the current stage (read and written in place)."""
        return getattr(self, f"state_{name}")

    def fixed_features(self, name: str, batch: dict, compute) -> list[torch.Tensor]:
        """Features of a fixed per-item state tensor `name` (a target image), computed once per stage and
        chunk by `compute(state)` and picked for the items of `batch`: they are the same at every step."""
        if name not in self._fixed_features:
            self._fixed_features[name] = compute(self.state(name))
        ids, wanted = batch_ids(self.batch), batch_ids(batch)
        features = self._fixed_features[name]
        if wanted == ids:
            return features
        index = torch.tensor([ids.index(i) for i in wanted], device=self.device)
        return [f.index_select(0, index) for f in features]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name in self.latent_names if (p := getattr(self, f"latent_{name}")) is not None]

    def latents(self, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every latent in full `[B or len(index), ...]`: its fixed rows with the trainable ones put in."""
        out = {}
        for name in self.latent_names:
            fixed, param = getattr(self, f"fixed_{name}"), getattr(self, f"latent_{name}")
            rows = getattr(self, f"_rows_{name}")
            if index is not None:
                fixed = fixed.index_select(0, index)
                param = param.index_select(0, index) if param is not None else None
            if param is None:
                out[name] = fixed
            elif rows.start == 0 and rows.stop == fixed.shape[1]:
                out[name] = param
            else:
                out[name] = torch.cat([fixed[:, : rows.start], param, fixed[:, rows.stop :]], dim=1)
        return out

    # The loop --------------------------------------------------------------------------------------------
    @staticmethod
    def check_trainer(trainer: pl.Trainer) -> None:
        """Refuse trainer settings that couple the items (called by the job before each fit)."""
        if trainer.gradient_clip_val:
            raise ValueError(
                "trainer.gradient_clip_val is set: clipping by a global norm couples the items of a latent "
                "fit (one norm over every item's gradient). Remove it; clip per item inside the method."
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.stage is None:
            raise RuntimeError("begin_stage(stage, batch) must run before Trainer.fit of a latent fit.")
        factory = self.stage_settings[self.stage]["optimizer"]
        optimizer = factory(self.trainable_parameters())
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ValueError(
                f"Stage {self.stage!r}: L-BFGS mixes every item's loss into one line search, so an item's "
                "result would depend on its batch-mates. Use a per-parameter optimiser (Adam, SGD)."
            )
        return optimizer

    def active_index(self) -> torch.Tensor | None:
        """Indices of the items still being fitted, or None when all are."""
        stopped = self.state("stopped")
        return None if not stopped.any() else (~stopped).nonzero().squeeze(1)

    def stage_batch(self, index: torch.Tensor | None = None) -> dict:
        """The chunk's batch with the per-item state under `state`, for the items `index` (all if None)."""
        batch = {**self.batch, "state": {name: self.state(name) for name in self.state_names}}
        return batch if index is None else index_batch(batch, index)

    def stage_losses(self, index: torch.Tensor | None = None) -> tuple[dict, dict, dict]:
        """(latents, batch, per-item terms with their sum `total`) of the items `index` (all if None)."""
        batch = self.stage_batch(index)
        latents = self.latents(index)
        terms = self.item_losses(self.stage, latents, batch)
        size = len(batch_ids(batch))
        for name, value in terms.items():
            assert value.shape == (size,), f"loss term {name!r} must be per item [{size}], got {value.shape}"
        terms["total"] = torch.stack(list(terms.values())).sum(0)
        return latents, batch, terms

    def training_step(self, batch: dict, batch_idx: int) -> None:
        index = self.active_index()
        latents, active_batch, terms = self.stage_losses(index)
        everyone = torch.arange(len(self.state("stopped")), device=self.device)
        positions = everyone if index is None else index
        stopping = self.stop_items(self.stage, latents, active_batch, terms)
        if stopping is not None and stopping.any():
            self.state("stopped")[positions[stopping]] = True  # no update from this step on
        self._record(positions, terms)
        updating = ~self.state("stopped")[positions]
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        if updating.any():
            self.manual_backward((terms["total"] * updating).sum())  # a sum: each item's own gradient
            frozen = self._stopped_values()
            optimizer.step()
            self._restore_stopped(frozen)
            self.state("steps_taken")[positions[updating]] += 1
            with torch.no_grad():
                params = {n: p for n in self.latent_names if (p := getattr(self, f"latent_{n}")) is not None}
                self.project(self.stage, params)
                self.after_step(self.stage, self.latents(), self.stage_batch())
        # The configured logger gets each term's mean over the items still fitted (curves.csv: per item).
        self.log_dict(
            {f"fit/{self.stage}/{name}": value.mean().detach() for name, value in terms.items()},
            batch_size=len(positions),
        )
        if self.state("stopped").all():
            self.trainer.should_stop = True

    def _stopped_values(self) -> dict[str, torch.Tensor] | None:
        if not self.state("stopped").any():
            return None
        stopped = self.state("stopped")
        return {
            n: p.detach()[stopped].clone()
            for n in self.latent_names
            if (p := getattr(self, f"latent_{n}")) is not None
        }

    @torch.no_grad()
    def _restore_stopped(self, frozen: dict[str, torch.Tensor] | None) -> None:
        """Put the stopped items' values back: momentum would otherwise still move them."""
        if frozen is None:
            return
        stopped = self.state("stopped")
        for name, values in frozen.items():
            getattr(self, f"latent_{name}")[stopped] = values

    def _record(self, positions: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        ids = batch_ids(self.batch)
        values = {name: value.detach().float().cpu().tolist() for name, value in terms.items()}
        steps = self.state("steps_taken")[positions].tolist()
        for row, position in enumerate(positions.tolist()):
            self.curve_rows.append(
                {"item_id": ids[position], "step": steps[row], **{k: v[row] for k, v in values.items()}}
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fit_stage"] = self.stage
        checkpoint["fit_curves"] = list(self.curve_rows)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("fit_stage") != self.stage:
            raise ValueError(
                f"This chunk checkpoint is of stage {checkpoint.get('fit_stage')!r}, not {self.stage!r}."
            )
        self.curve_rows = list(checkpoint.get("fit_curves", []))

    @torch.no_grad()
    def final_results(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """(per-item outputs `{name: [B, ...]}`, final per-item losses `{name: [B]}`, steps taken `[B]`)."""
        latents, batch, terms = (
            self.stage_losses() if self.stage_steps(self.stage) else (self.latents(), self.stage_batch(), {})
        )
        return self.stage_outputs(self.stage, latents, batch), terms, self.state("steps_taken").clone()


def _trainable_rows(trainable: bool | slice, value: torch.Tensor) -> slice | None:
    assert value.ndim >= 2, (
        f"a latent is [B, ...] with at least one dimension per item, got {tuple(value.shape)}"
    )
    if trainable is False:
        return None
    if trainable is True:
        return slice(0, value.shape[1])
    start, stop, step = trainable.indices(value.shape[1])
    assert step == 1, "trainable rows must be contiguous"
    return slice(start, stop)


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
