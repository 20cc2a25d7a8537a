"""Pivotal Tuning Inversion (Roich et al. 2021, danielroich/PTI) as DragGAN's optional `pti` stage: after a
photo's W+ inversion (the pivot, `invert`), the generator's synthesis weights are fine-tuned so that the
pivot renders the photo; the drag then runs on that photo's tuned generator. Off by default
(`fit.module.pti.enabled`, or experiment=draggan_photo_pti).

Like `invert` it is an image stage: one tuning per distinct photo, cached on the photo's bytes, the generator
file, the inversion's and PTI's settings (facelab/fit/cache.py), and copied into each item's `pti/` folder
as `photo_weights.pt` (a flat `[P]` vector of the synthesis parameters, facelab/nets/tuned_weights.py) and
`photo_image.png` (the tuned rendering of the pivot). The `[B, P]` weights are the stage's latent: each
item has its own copy, Adam moves each row with its own item's gradient only, and a chunk checkpoint holds
them with their optimiser state, so a tuning cut off mid-way resumes and a batch equals photos tuned alone.

What the official coach does that this stage also does (configs/hyperparameters.py and
training/coaches/single_id_coach.py; the numbers are in conf/experiment/draggan_photo.yaml): Adam on the
generator, L2 + LPIPS (AlexNet) at full resolution between the pivot's image and the photo, `noise_mode`
const, at most `max_pti_steps`, and a photo stops as soon as its LPIPS is at or under the threshold (checked
before the step, as the coach breaks before `backward`). The locality regulariser is off by default as in
the official configuration; when on, each step draws one latent per photo, seeded by (seed, photo, step) so
that a resumed or batched tuning draws the same ones. Differences: the pivot is Barbershop's W+ embedding
(the official default is a 450-step W projection), and the mapping network is not tuned (it takes no part
in the official loss either, so Adam never moves it there).
"""

from __future__ import annotations

import hashlib

import torch

from facelab.fit.records import item_seed
from facelab.losses.barbershop import lpips_features
from facelab.losses.pti import locality_terms, locality_ws, reconstruction_terms
from facelab.metrics.perceptual import PerceptualDistance
from facelab.nets.frozen import register_frozen
from facelab.nets.item_by_item import item_by_item
from facelab.nets.tuned_weights import call_per_item, flatten_weights
from lightning_modules.latent_fit import Latent, batch_ids

PTI_STAGE = "pti"


def with_pti_stage(run_stages: list[str] | None, stages, enabled: bool) -> list[str] | None:
    """The stages to run: `pti` put right after `invert` when PTI is enabled (and dropped when it is not)."""
    names = list(stages) if run_stages is None else list(run_stages)
    names = [name for name in names if name != PTI_STAGE]
    if not enabled:
        return names
    if "invert" not in names:
        raise ValueError(
            "fit.module.pti.enabled=true tunes the generator on a photo's inversion: it needs the photo "
            "stages (experiment=draggan_photo_pti, or experiment=draggan_photo with "
            "fit.module.pti.enabled=true)."
        )
    if PTI_STAGE not in stages:
        raise ValueError("fit.module.pti.enabled=true needs fit.module.stages.pti (steps, optimizer).")
    names.insert(names.index("invert") + 1, PTI_STAGE)
    return names


class PivotalTuning:
    """The `pti` stage's hooks, mixed into DragGAN (which owns `generator` and the stage dispatch)."""

    def _setup_pti(
        self,
        enabled: bool = False,
        weights: dict | None = None,
        lpips_net: str = "alex",
        lpips_trunk_path: str | None = None,
        lpips_threshold: float = 0.06,
        locality: dict | None = None,
    ) -> None:
        if not enabled:
            return
        self.pti_weights = {"l2": 1.0, "lpips": 1.0, **(weights or {})}
        self.pti_lpips_net, self.pti_lpips_threshold = lpips_net, lpips_threshold
        self.pti_locality = {
            "enabled": False,
            "weights": {"l2": 0.1, "lpips": 0.1},
            "alpha": 30.0,
            "truncation_psi": 0.5,
            **(locality or {}),
        }
        register_frozen(
            self, "pti_lpips", item_by_item(PerceptualDistance(lpips_net, weights_path=lpips_trunk_path))
        )
        self._pti_lpips_now: torch.Tensor | None = None

    def pti_identity(self, inversion_identity: str) -> str:
        """What a photo's tuned weights depend on besides the photo: its pivot's identity, PTI's settings."""
        settings = self.stage_settings[PTI_STAGE]
        parts = [
            inversion_identity,
            repr(sorted(self.pti_weights.items())),
            f"{self.pti_lpips_net}:{self.pti_lpips_threshold}",
            repr(sorted((k, repr(v)) for k, v in self.pti_locality.items())),
            f"{PTI_STAGE}:{settings['steps']}:{settings['optimizer']}",
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    # The generator as each item has it --------------------------------------------------------------------
    @staticmethod
    def tuned_weights(batch: dict) -> torch.Tensor | None:
        """`[B, P]` the items' PTI weights (from the `pti` stage's outputs), or None without PTI."""
        return batch.get("previous", {}).get(PTI_STAGE, {}).get("photo_weights")

    def synthesize(self, ws: torch.Tensor, weights: torch.Tensor | None, **kwargs) -> torch.Tensor:
        """The synthesis of ws `[B, num_ws, w_dim]`, by each item's tuned weights `[B, P]` if given."""
        if weights is None:
            return self.generator.synthesis(ws, **kwargs)
        return call_per_item(self.generator.synthesis, weights.to(ws.device), ws, **kwargs)

    # The stage ---------------------------------------------------------------------------------------------
    def _pti_latents(self, batch: dict) -> dict[str, Latent]:
        size = len(batch_ids(batch))
        start = flatten_weights(self.generator.synthesis).to(self.device)
        return {"weights": Latent(start.expand(size, -1))}  # [B, P], every weight trainable

    def _pti_state(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"target": batch["image"]}

    def _pti_terms(self, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Every term item by item (generator, AlexNet and reductions on batches of one), so that an item's
        gradient is bit for bit the one it gets alone: Adam turns rounding noise in a near-zero gradient
        into a full-size step, so batched arithmetic would show up in the tuned weights."""
        pivot = batch["previous"]["invert"]["w"]  # [B, num_ws, w_dim]
        target_features = self.fixed_features("target", batch, self._lpips_features_each)
        ids, steps = batch_ids(batch), batch["state"]["steps_taken"].tolist()
        per_item, stop_lpips = [], []
        for index in range(len(ids)):
            one = slice(index, index + 1)
            image = self.synthesize(pivot[one], latents["weights"][one], noise_mode="const")
            terms, lpips = reconstruction_terms(
                image,
                batch["state"]["target"][one],
                [features[one] for features in target_features],
                self.pti_lpips,
                self.pti_weights,
            )
            if self.pti_locality["enabled"]:
                seed = item_seed(self.init_seed, f"pti-locality:{ids[index]}:{steps[index]}")
                terms |= self._locality(pivot[one], latents["weights"][one], seed)
            per_item.append(terms)
            stop_lpips.append(lpips)
        self._pti_lpips_now = torch.cat(stop_lpips)
        return {name: torch.cat([terms[name] for terms in per_item]) for name in per_item[0]}

    def _lpips_features_each(self, images: torch.Tensor) -> list[torch.Tensor]:
        """lpips_features of `[B, 3, R, R]` images computed one image at a time (see _pti_terms)."""
        each = [lpips_features(self.pti_lpips, images[i : i + 1]) for i in range(len(images))]
        return [torch.cat(depth) for depth in zip(*each, strict=True)]

    def _locality(self, pivot: torch.Tensor, weights: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """One photo's locality terms (`[1, ...]` pivot and weights), its random latent drawn from `seed`."""
        z = torch.randn(1, self.generator.z_dim, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            sampled = self.generator.mapping(
                z.to(pivot.device), truncation_psi=self.pti_locality["truncation_psi"]
            )
            ball = locality_ws(pivot, sampled, self.pti_locality["alpha"])
            original = self.generator.synthesis(ball, noise_mode="none")
        tuned = self.synthesize(ball, weights, noise_mode="none")
        return locality_terms(tuned, original, self.pti_lpips, self.pti_locality["weights"])

    def _pti_stop(self) -> torch.Tensor | None:
        """single_id_coach: `if loss_lpips <= LPIPS_value_threshold: break`, before the step."""
        return None if self._pti_lpips_now is None else self._pti_lpips_now <= self.pti_lpips_threshold

    @torch.no_grad()
    def _pti_outputs(self, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        pivot = batch["previous"]["invert"]["w"]
        image = self.synthesize(pivot, latents["weights"], noise_mode="const")
        return {"weights": latents["weights"], "image": image}
