"""HOG-guided two-stage face inpainting (EdgeConnect's architecture and losses, HOG in place of edges).

Stage 1, the face-shape predictor G_H, predicts the guide (HOG cells) of the whole image from the masked
image, the known part of the guide and the mask; D_H judges (gray image, guide) pairs. Stage 2, G_I,
inpaints the image from the masked image, the mask and the guide; D_I judges images.

Modes (`mode`), after EdgeConnect's MODEL 1-4:
  shape    stage 1 alone                          (EdgeConnect 1)
  inpaint  stage 2 alone on ground-truth guides   (EdgeConnect 2)
  both     both in one fit; stage 2 still gets ground-truth guides, so the stages are independent
  cascade  stage 2 on stage 1's detached prediction, stage 1 frozen (from `init_from`) (EdgeConnect 3)
  joint    both trained, stage 2 on stage 1's prediction, its loss reaching G_H     (EdgeConnect 4)
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from facelab.io.checkpoints import load_checkpoint_dict
from facelab.losses.adversarial import AdversarialLoss
from facelab.losses.perceptual import PerceptualStyleLoss
from facelab.nets.frozen import register_frozen
from facelab.nets.vgg import VGG16Features, vgg16_weights_path
from facelab.ops.color import rgb_to_gray, to_unit_range
from facelab.ops.masks import composite, masked_input
from lightning_modules.inpainting_stage import (
    GANStage,
    guide_from_config,
    stages_for,
    upgrade_hyperparameters,
    upgrade_state_dict,
)

MODES = ("shape", "inpaint", "both", "cascade", "joint")
VGG_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")  # the paper: VGG16 relu1_1..relu4_1
MODEL_YAML = Path(__file__).resolve().parents[1] / "conf" / "model" / "inpainting.yaml"


class GuidedInpainting(pl.LightningModule):
    """Both stages, their GAN losses, validation metrics and the inference cascade. Every argument comes from
    conf/model/inpainting.yaml (its defaults live there only); the networks and optimisers are `_target_`
    configs that this module instantiates (`_recursive_: false`) because their channel counts follow from
    the guide, and so that the checkpoint's hyper-parameters stay plain data that rebuild the model."""

    def __init__(
        self,
        mode: str,
        guide: dict,
        networks: dict,  # sizes the stage configs interpolate; kept for the record
        shape_stage: dict,  # {generator, discriminator}: `_target_` configs of stage 1's networks
        inpaint_stage: dict,  # the same for stage 2
        losses: dict,
        optimizers: dict,  # {generator, discriminator}: `_target_` optimiser partials (`_partial_: true`)
        hole_fill: float,
        init_from: str | None,
        channels_last: bool,
        compile_generators: bool,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.guide = guide_from_config(guide)
        self.stage_names = stages_for(mode, self.guide.kind, MODES)
        channels = self.guide.channels
        self.shape_stage = self.inpaint_stage = None
        if "shape" in self.stage_names:  # masked image + known guide + mask -> guide; D sees (gray, guide)
            self.shape_stage = self._build_stage(
                "shape", shape_stage, 3 + channels + 1, channels, 1 + channels
            )
        if "inpaint" in self.stage_names:  # masked image + guide + mask -> image; D sees the image
            self.inpaint_stage = self._build_stage("inpaint", inpaint_stage, 3 + channels + 1, 3, 3)
        self.adversarial = AdversarialLoss(losses["gan"])
        self.perceptual_style = None
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_psnr_zero_fill = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        if channels_last:  # NHWC: what cuDNN's tensor-core convolutions read without a transpose
            self.to(memory_format=torch.channels_last)
        if mode == "cascade":
            self.shape_stage.requires_grad_(False)
            self.train()  # puts the frozen stage 1 in eval mode (see `train`)

    @staticmethod
    def _build_stage(name: str, config: dict, g_in: int, g_out: int, d_in: int) -> GANStage:
        generator = instantiate(config["generator"], in_channels=g_in, out_channels=g_out)
        return GANStage(name, generator, instantiate(config["discriminator"], in_channels=d_in))

    # ----------------------------------------------------------------- structure
    @property
    def stages(self) -> list[GANStage]:
        """The stages this model has, stage 1 first."""
        return [stage for stage in (self.shape_stage, self.inpaint_stage) if stage is not None]

    @property
    def trained_stages(self) -> list[GANStage]:
        """Stages whose weights this fit updates (cascade freezes stage 1)."""
        return [self.inpaint_stage] if self.hparams.mode == "cascade" else self.stages

    def train(self, mode: bool = True):
        """As nn.Module.train, but a frozen stage 1 stays in eval mode: spectral norm's power iteration
        would otherwise keep changing its effective weights."""
        super().train(mode)
        if self.hparams.mode == "cascade":
            self.shape_stage.eval()
        return self

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, strict: bool = True, **overrides):
        """The model of a facelab-train checkpoint, of today's layout or of the one before the stages were
        objects (`shape_generator.*` keys, `networks` / `optim` dicts). Read as data only (weights_only)."""
        checkpoint = load_checkpoint_dict(checkpoint_path, map_location or "cpu", what="ckpt")
        if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
            raise ValueError(
                f"ckpt={str(checkpoint_path)!r} holds no state_dict / hyper_parameters: it is not a "
                "checkpoint written by facelab-train (<run dir>/checkpoints/last.ckpt)."
            )
        hparams = upgrade_hyperparameters(dict(checkpoint["hyper_parameters"]), MODEL_YAML)
        model = cls(**{**hparams, **overrides})
        model.load_state_dict(upgrade_state_dict(checkpoint["state_dict"]), strict=strict)
        return model

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A resumed fit (ckpt_path=...) loads the state dict after this hook: rename an old checkpoint's keys.
        checkpoint["state_dict"] = upgrade_state_dict(checkpoint["state_dict"])

    def load_stage_weights(self, path: str) -> None:
        """Warm start from another fit's checkpoint: copies every stage present in both."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"model.init_from={str(path)!r} does not exist; point it at a checkpoint (.ckpt) "
                "of an earlier fit (e.g. mode=shape for cascade)."
            )
        checkpoint = load_checkpoint_dict(path, "cpu", what="model.init_from")
        state = upgrade_state_dict(checkpoint.get("state_dict", {}))
        own = self.state_dict()
        shared = {k: v for k, v in state.items() if k in own}
        mismatched = [k for k, v in shared.items() if v.shape != own[k].shape]
        if not shared or mismatched:
            raise ValueError(
                f"model.init_from={str(path)!r} does not fit this model (guide/network config differs). "
                f"Shared keys: {len(shared)}; mismatched shapes: {mismatched[:10]}"
            )
        if self.hparams.mode == "cascade" and not any(k.startswith("shape_stage.generator.") for k in shared):
            raise ValueError(f"mode=cascade needs stage-1 weights, but {path} has no stage-1 generator keys.")
        self.load_state_dict(shared, strict=False)

    def setup(self, stage: str) -> None:
        # Fit-only work lives here, not in __init__: loading a checkpoint for inference needs neither the
        # warm-start file nor the VGG weights.
        if stage == "fit" and self.hparams.init_from:
            self.load_stage_weights(self.hparams.init_from)
        elif stage == "fit" and self.hparams.mode == "cascade":
            raise ValueError(
                "mode=cascade trains stage 2 on a frozen stage 1: set model.init_from to the "
                "checkpoint of a fit with mode=shape (or both)."
            )
        weights = self.hparams.losses["inpaint"]
        needs_vgg = self.inpaint_stage in self.trained_stages and (weights["perceptual"] or weights["style"])
        if stage == "fit" and needs_vgg and self.perceptual_style is None:
            vgg = VGG16Features(VGG_LAYERS, vgg16_weights_path(self.hparams.losses["vgg_weights"]))
            loss = PerceptualStyleLoss(vgg, VGG_LAYERS, VGG_LAYERS)
            self.perceptual_style = register_frozen(self, "perceptual_style", loss)
            if self.hparams.channels_last:
                self.perceptual_style.to(memory_format=torch.channels_last)
        if stage == "fit" and self.hparams.compile_generators:
            for gan_stage in self.trained_stages:  # compiled in place: state-dict keys stay as they are
                gan_stage.generator.compile()

    def configure_optimizers(self):
        """The generator and discriminator optimiser partials of the config, per trained stage, in the order
        (stage 1 G, stage 1 D, stage 2 G, stage 2 D) that `training_step` and old checkpoints use."""
        factories = self.hparams.optimizers
        return [
            instantiate(factories[role])(getattr(stage, role).parameters())
            for stage in self.trained_stages
            for role in ("generator", "discriminator")
        ]

    # ----------------------------------------------------------------- forward
    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def predict_guide(self, image_masked, known_guide, mask):  # [B,3,H,W], [B,C,h,w], [B,1,H,W]
        """Stage 1: the whole guide, merged with the known cells (as EdgeConnect merges its edges).
        `known_guide` may be the full image's guide: only its cells outside the hole are read."""
        size = tuple(image_masked.shape[-2:])
        guide_hole = self.guide.hole_mask(mask)  # [B, 1, h, w]
        known = known_guide * (1 - guide_hole)
        generator_input = torch.cat([image_masked, self.guide.to_image_size(known, size), mask], 1)
        raw = self.shape_stage.generator(self._memory_format(generator_input))
        predicted = self.guide.from_generator(raw.float())  # [B, C, h, w]
        return predicted, predicted * guide_hole + known

    def inpaint_image(self, image_masked, guide, mask):
        """Stage 2: the generator's raw output `[B, 3, H, W]` in [-1, 1]."""
        size = tuple(image_masked.shape[-2:])
        generator_input = torch.cat([image_masked, self.guide.to_image_size(guide, size), mask], 1)
        return self.inpaint_stage.generator(self._memory_format(generator_input)).float()

    @torch.inference_mode()
    def inpaint(self, image: torch.Tensor, mask: torch.Tensor, guide: torch.Tensor | None = None) -> dict:
        """The test-time cascade (`image` [B,3,H,W] in [-1,1], `mask` [B,1,H,W]): everything is computed
        from the masked image alone, unless a ground-truth `guide` is given (how mode=inpaint validates)."""
        if self.inpaint_stage is None:
            raise ValueError(
                "This checkpoint holds only stage 1 (mode=shape); inpainting needs a fit with "
                "mode=both, joint or cascade."
            )
        image_masked = masked_input(image, mask, self.hparams.hole_fill)
        out = {"masked": image_masked}
        if guide is None:
            guide = self.guide.compute(image_masked)  # only its known cells are used
            if self.shape_stage is not None:
                out["guide_pred"], guide = self.predict_guide(image_masked, guide, mask)
            elif self.guide.channels:
                raise ValueError(
                    f"Stage 2 was trained with a {self.guide.kind} guide but this checkpoint has no "
                    "stage 1 to predict it in the hole; train with mode=both (or joint)."
                )
        out["guide"] = guide
        out["pred"] = self.inpaint_image(image_masked, guide, mask)
        out["composite"] = composite(out["pred"], image, mask)
        return out

    # ----------------------------------------------------------------- training
    def _require_finite(self, name: str, loss: torch.Tensor) -> None:
        """Stop before a NaN/inf loss reaches the weights, so the checkpoints on disk stay good."""
        if torch.isfinite(loss).all():
            return
        checkpoint = getattr(self.trainer.checkpoint_callback, "dirpath", None) if self._trainer else None
        raise FloatingPointError(
            f"Non-finite {name} loss ({loss.item()}) at step {self.global_step}, epoch {self.current_epoch}; "
            "stopping before it reaches the weights. The last good checkpoint is "
            f"{checkpoint or '<run dir>/checkpoints'}/last.ckpt: resume with ckpt_path=last after lowering "
            "model.optimizers.generator.lr (and .discriminator.lr) or checking the data."
        )

    def _optimizer_step(self, optimizers: list, loss: torch.Tensor, name: str) -> None:
        """One step of the D or the G side: finite check, backward through `loss`, step `optimizers`."""
        self._require_finite(name, loss)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()

    def _optimizers_by_role(self) -> dict[str, dict[str, object]]:
        """{"generator": {stage name: optimizer}, "discriminator": {...}} in `configure_optimizers`' order."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        pairs = iter(optimizers)
        by_role = {"generator": {}, "discriminator": {}}
        for stage in self.trained_stages:
            by_role["generator"][stage.name] = next(pairs)
            by_role["discriminator"][stage.name] = next(pairs)
        return by_role

    def training_step(self, batch: dict, batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]
        optimizers = self._optimizers_by_role()
        image_masked = masked_input(image, mask, self.hparams.hole_fill)
        gt_guide = self.guide.compute(image)  # once per batch: stage 1's target and known cells, G_I's input
        logs, generator_total = {}, 0.0
        trained = self.trained_stages

        guide_for_inpaint = gt_guide
        if self.shape_stage is not None:
            with torch.set_grad_enabled(self.shape_stage in trained):
                predicted, merged = self.predict_guide(image_masked, gt_guide, mask)
            if self.hparams.mode in ("cascade", "joint"):
                guide_for_inpaint = merged.detach() if self.hparams.mode == "cascade" else merged
            if self.shape_stage in trained:
                real, fake = self._shape_pairs(image, gt_guide, predicted)
                parts = {"l1": self._hole_l1(predicted, gt_guide, self.guide.hole_mask(mask))}
                total, stage_logs = self._stage_losses(self.shape_stage, real, fake, parts, optimizers)
                generator_total = generator_total + total
                logs.update(stage_logs)
        if self.inpaint_stage is not None:
            pred = self.inpaint_image(image_masked, guide_for_inpaint, mask)
            parts = {"l1": self._hole_l1(pred, image, mask)}
            if self.perceptual_style is not None:
                parts["perceptual"], parts["style"] = self.perceptual_style(
                    self._memory_format(pred), self._memory_format(image), mask
                )
            total, stage_logs = self._stage_losses(self.inpaint_stage, image, pred, parts, optimizers)
            generator_total = generator_total + total
            logs.update(stage_logs)

        self._optimizer_step(list(optimizers["generator"].values()), generator_total, "generator")
        self._log_training(logs, generator_total, image.shape[0])

    def _shape_pairs(self, image, gt_guide, predicted):
        """D_H's real and fake inputs: the gray image beside the true or the predicted guide."""
        size = tuple(image.shape[-2:])
        gray = rgb_to_gray(image)
        real = torch.cat([gray, self.guide.to_image_size(gt_guide, size)], 1)
        fake = torch.cat([gray, self.guide.to_image_size(predicted, size)], 1)
        return self._memory_format(real), self._memory_format(fake)

    @staticmethod
    def _hole_l1(pred, target, hole):
        """Mean absolute error divided by the hole fraction: EdgeConnect's L1, which weighs the hole."""
        return (pred - target).abs().mean() / hole.mean().clamp_min(1e-3)

    def _stage_losses(self, stage: GANStage, real, fake, parts: dict, optimizers: dict):
        """The stage's D step, then its generator's weighted loss (its L1 and VGG `parts` plus the adversarial
        term). Returns (weighted total, detached parts for logging)."""
        d_loss = stage.discriminator_loss(self.adversarial, real, fake)
        self._optimizer_step([optimizers["discriminator"][stage.name]], d_loss, f"{stage.name} discriminator")
        parts = {**parts, "adversarial": stage.generator_adversarial(self.adversarial, fake)}
        weights = self.hparams.losses[stage.name]
        # Summed in the YAML's order (l1, adversarial, perceptual, style), whatever the order computed in.
        total = sum(weights[name] * parts[name] for name in weights if name in parts)
        logs = {f"train/{stage.name}_g_{k}": v.detach() for k, v in parts.items()}
        return total, {**logs, f"train/{stage.name}_d_adversarial": d_loss.detach()}

    def _log_training(self, logs: dict, generator_total: torch.Tensor, batch_size: int) -> None:
        # Step values are this rank's; epoch means are over all ranks, synced once at the epoch's end.
        self.log_dict(
            {f"{k}_step": v for k, v in logs.items()}, on_step=True, on_epoch=False, batch_size=batch_size
        )
        self.log_dict(
            {f"{k}_epoch": v for k, v in logs.items()},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=batch_size,
        )
        self.log("train/g_total", generator_total.detach(), prog_bar=True, batch_size=batch_size)

    # ----------------------------------------------------------------- evaluation
    def _evaluate_guide(self, image, mask, prefix: str) -> dict:
        """mode=shape: score the predicted guide in the hole."""
        size = tuple(image.shape[-2:])
        image_masked = masked_input(image, mask, self.hparams.hole_fill)
        gt_guide = self.guide.compute(image)
        # The masked image's guide equals the full image's outside the (dilated) hole, the only cells read.
        predicted, merged = self.predict_guide(image_masked, gt_guide, mask)
        hole = self.guide.hole_mask(mask)
        l1 = ((predicted - gt_guide).abs() * hole).sum() / (hole.sum() * predicted.shape[1]).clamp_min(1)
        self.log(f"{prefix}/guide_l1", l1, batch_size=image.shape[0], sync_dist=True)
        return {
            "masked": image_masked,
            "guide": self.guide.render(merged, size),
            "guide_gt": self.guide.render(gt_guide, size),
            "image": image,
        }

    def _evaluate(self, batch: dict, prefix: str) -> dict:
        image, mask = batch["image"], batch["mask"]
        if self.inpaint_stage is None:
            return self._evaluate_guide(image, mask, prefix)
        ground_truth_guide = (
            self.guide.compute(image) if self.shape_stage is None and self.guide.channels else None
        )
        out = self.inpaint(image, mask, ground_truth_guide)
        unit_composite, unit_image = to_unit_range(out["composite"]), to_unit_range(image)
        self.val_psnr(unit_composite, unit_image)
        self.val_ssim(unit_composite, unit_image)
        zero_filled = composite(torch.zeros_like(image), image, mask)  # the floor any model must beat
        self.val_psnr_zero_fill(to_unit_range(zero_filled), unit_image)
        batch_size = image.shape[0]
        self.log(f"{prefix}/psnr", self.val_psnr, batch_size=batch_size, prog_bar=True)
        self.log(f"{prefix}/ssim", self.val_ssim, batch_size=batch_size)
        self.log(f"{prefix}/psnr_zero_fill", self.val_psnr_zero_fill, batch_size=batch_size)
        visuals = {
            "masked": out["masked"],
            "pred": out["pred"],
            "composite": out["composite"],
            "image": image,
        }
        if self.guide.channels:
            visuals["guide"] = self.guide.render(out["guide"], tuple(image.shape[-2:]))
        return visuals

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "test")
