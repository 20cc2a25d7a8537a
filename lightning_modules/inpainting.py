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
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from facelab.losses.adversarial import AdversarialLoss
from facelab.losses.perceptual import PerceptualStyleLoss
from facelab.nets.frozen import register_frozen
from facelab.nets.inpaint import InpaintGenerator, PatchDiscriminator
from facelab.nets.vgg import VGG16Features, vgg16_weights_path
from facelab.ops.color import rgb_to_gray, to_unit_range
from facelab.ops.guides import make_guide
from facelab.ops.masks import composite, masked_input

MODES = ("shape", "inpaint", "both", "cascade", "joint")
VGG_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")  # the paper: VGG16 relu1_1..relu4_1


class GuidedInpainting(pl.LightningModule):
    """Both stages, their GAN losses, validation metrics and the inference cascade."""

    def __init__(
        self,
        mode: str = "both",
        guide: dict | None = None,
        networks: dict | None = None,
        losses: dict | None = None,
        optim: dict | None = None,
        hole_fill: float = 1.0,
        init_from: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.guide = make_guide(**(guide or {"kind": "hog"}))
        self.stages = self._stages_for(mode, self.guide.kind)
        networks = dict(networks or {})
        generator_options = {k: networks[k] for k in ("base_channels", "n_residual_blocks") if k in networks}
        d_channels = networks.get("discriminator_channels", 64)
        channels = self.guide.channels
        if "shape" in self.stages:
            self.shape_generator = InpaintGenerator(
                3 + channels + 1, channels, spectral_norm=True, output="sigmoid", **generator_options
            )
            self.shape_discriminator = PatchDiscriminator(1 + channels, d_channels)
        self.inpaint_generator = None
        if "inpaint" in self.stages:
            self.inpaint_generator = InpaintGenerator(3 + channels + 1, 3, output="tanh", **generator_options)
            self.inpaint_discriminator = PatchDiscriminator(3, d_channels)
        self.loss_config = {
            "gan": "nsgan",
            "shape": {"l1": 1.0, "adversarial": 1.0},
            "inpaint": {"l1": 1.0, "adversarial": 0.1, "perceptual": 0.1, "style": 250.0},
            "vgg_weights": None,
            **(losses or {}),
        }
        self.adversarial = AdversarialLoss(self.loss_config["gan"])
        self.perceptual_style = None
        self.optim_config = {"lr": 1e-4, "betas": (0.0, 0.9), "d2g_lr": 0.1, **(optim or {})}
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_psnr_masked = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        if mode == "cascade":
            self.shape_generator.requires_grad_(False)
            self.shape_discriminator.requires_grad_(False)
            self.train()  # puts the frozen stage 1 in eval mode (see `train`)

    # ----------------------------------------------------------------- structure
    @staticmethod
    def _stages_for(mode: str, guide_kind: str) -> tuple[str, ...]:
        if mode not in MODES:
            raise ValueError(f"model.mode={mode!r}; choose one of {MODES}.")
        if guide_kind == "none":
            if mode in ("shape", "cascade", "joint"):
                raise ValueError(
                    f"model.mode={mode!r} needs a guide to predict, but model.guide.kind='none'. "
                    "Use mode 'inpaint' or 'both' for plain inpainting."
                )
            return ("inpaint",)
        return {"shape": ("shape",), "inpaint": ("inpaint",)}.get(mode, ("shape", "inpaint"))

    @property
    def trained_stages(self) -> tuple[str, ...]:
        """Stages whose weights this fit updates (cascade freezes stage 1)."""
        return ("inpaint",) if self.hparams.mode == "cascade" else self.stages

    def train(self, mode: bool = True):
        """As nn.Module.train, but a frozen stage 1 stays in eval mode: spectral norm's power iteration
        would otherwise keep changing its effective weights."""
        super().train(mode)
        if self.hparams.mode == "cascade":
            self.shape_generator.eval()
            self.shape_discriminator.eval()
        return self

    def load_stage_weights(self, path: str) -> None:
        """Warm start from another fit's checkpoint: copies every stage present in both."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"model.init_from={str(path)!r} does not exist; point it at a checkpoint (.ckpt) "
                "of an earlier fit (e.g. mode=shape for cascade)."
            )
        # weights_only: a checkpoint is data, never code to run
        state = torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {})
        own = self.state_dict()
        shared = {k: v for k, v in state.items() if k in own}
        mismatched = [k for k, v in shared.items() if v.shape != own[k].shape]
        if not shared or mismatched:
            raise ValueError(
                f"model.init_from={str(path)!r} does not fit this model (guide/network config differs). "
                f"Shared keys: {len(shared)}; mismatched shapes: {mismatched[:10]}"
            )
        if self.hparams.mode == "cascade" and not any(k.startswith("shape_generator.") for k in shared):
            raise ValueError(f"mode=cascade needs stage-1 weights, but {path} has no shape_generator.* keys.")
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
        weights = self.loss_config["inpaint"]
        needs_vgg = "inpaint" in self.trained_stages and (weights["perceptual"] or weights["style"])
        if stage == "fit" and needs_vgg and self.perceptual_style is None:
            vgg = VGG16Features(VGG_LAYERS, vgg16_weights_path(self.loss_config["vgg_weights"]))
            loss = PerceptualStyleLoss(vgg, VGG_LAYERS, VGG_LAYERS)
            self.perceptual_style = register_frozen(self, "perceptual_style", loss)

    def configure_optimizers(self):
        """Adam for each trained stage's G and D, in the order `training_step` names them (g, d per stage);
        D's learning rate is lr * d2g_lr (EdgeConnect's D2G_LR)."""
        lr, betas = self.optim_config["lr"], tuple(self.optim_config["betas"])
        optimizers = []
        for stage in self.trained_stages:
            for role, role_lr in (("generator", lr), ("discriminator", lr * self.optim_config["d2g_lr"])):
                network = getattr(self, f"{stage}_{role}")
                optimizers.append(torch.optim.Adam(network.parameters(), lr=role_lr, betas=betas))
        return optimizers

    # ----------------------------------------------------------------- forward
    def predict_guide(self, image_masked, known_guide, mask):  # [B,3,H,W], [B,C,h,w], [B,1,H,W]
        """Stage 1: the whole guide, merged with the known cells (as EdgeConnect merges its edges)."""
        size = tuple(image_masked.shape[-2:])
        guide_hole = self.guide.hole_mask(mask)  # [B, 1, h, w]
        known = known_guide * (1 - guide_hole)
        raw = self.shape_generator(torch.cat([image_masked, self.guide.to_image_size(known, size), mask], 1))
        predicted = self.guide.from_generator(raw)  # [B, C, h, w]
        return predicted, predicted * guide_hole + known

    def inpaint_image(self, image_masked, guide, mask):
        """Stage 2: the generator's raw output `[B, 3, H, W]` in [-1, 1]."""
        size = tuple(image_masked.shape[-2:])
        return self.inpaint_generator(
            torch.cat([image_masked, self.guide.to_image_size(guide, size), mask], 1)
        )

    @torch.no_grad()
    def inpaint(self, image: torch.Tensor, mask: torch.Tensor, guide: torch.Tensor | None = None) -> dict:
        """The test-time cascade (`image` [B,3,H,W] in [-1,1], `mask` [B,1,H,W]): everything is computed
        from the masked image alone, unless a ground-truth `guide` is given (how mode=inpaint validates)."""
        if self.inpaint_generator is None:
            raise ValueError(
                "This checkpoint holds only stage 1 (mode=shape); inpainting needs a fit with "
                "mode=both, joint or cascade."
            )
        image_masked = masked_input(image, mask, self.hparams.hole_fill)
        out = {"masked": image_masked}
        if guide is None:
            guide = self.guide.compute(image_masked)  # only its known cells are used
            if "shape" in self.stages:
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
            "model.optim.lr or checking the data."
        )

    def _step(self, optimizer, loss: torch.Tensor, name: str) -> None:
        self._require_finite(name, loss)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        image, mask = batch["image"], batch["mask"]
        optimizers = self.optimizers()
        names = [f"{stage}_{role}" for stage in self.trained_stages for role in ("g", "d")]
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        optimizers = dict(zip(names, optimizers, strict=True))
        image_masked = masked_input(image, mask, self.hparams.hole_fill)
        gt_guide = self.guide.compute(image)
        logs, generator_total = {}, 0.0

        guide_for_inpaint = gt_guide
        if "shape" in self.stages:
            with torch.set_grad_enabled("shape" in self.trained_stages):
                predicted, merged = self.predict_guide(image_masked, gt_guide, mask)
            if self.hparams.mode in ("cascade", "joint"):
                guide_for_inpaint = merged.detach() if self.hparams.mode == "cascade" else merged
            if "shape" in self.trained_stages:
                total, parts = self._shape_losses(image, mask, gt_guide, predicted, optimizers["shape_d"])
                generator_total = generator_total + total
                logs.update({f"train/shape_{k}": v for k, v in parts.items()})
        if "inpaint" in self.stages:
            pred = self.inpaint_image(image_masked, guide_for_inpaint, mask)
            total, parts = self._inpaint_losses(image, mask, pred, optimizers["inpaint_d"])
            generator_total = generator_total + total
            logs.update({f"train/inpaint_{k}": v for k, v in parts.items()})

        self._require_finite("generator", generator_total)
        generator_optimizers = [o for name, o in optimizers.items() if name.endswith("_g")]
        for optimizer in generator_optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.manual_backward(generator_total)
        for optimizer in generator_optimizers:
            optimizer.step()
        batch_size = image.shape[0]
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

    def _shape_losses(self, image, mask, gt_guide, predicted, d_optimizer):
        """D_H step, then G_H's loss: L1 in the hole + adversarial, 1:1 (the paper)."""
        weights, size = self.loss_config["shape"], tuple(image.shape[-2:])
        gray = rgb_to_gray(image)
        real = torch.cat([gray, self.guide.to_image_size(gt_guide, size)], 1)
        fake = torch.cat([gray, self.guide.to_image_size(predicted, size)], 1)
        d_loss = self.adversarial.discriminator(
            self.shape_discriminator(real)[0], self.shape_discriminator(fake.detach())[0]
        )
        self._step(d_optimizer, d_loss, "shape discriminator")
        hole_fraction = self.guide.hole_mask(mask).mean().clamp_min(1e-3)
        parts = {
            "l1": (predicted - gt_guide).abs().mean() / hole_fraction,  # normalised as EdgeConnect's L1
            "adversarial": self.adversarial.generator(self.shape_discriminator(fake)[0]),
        }
        return self._weighted(parts, weights, d_loss)

    @staticmethod
    def _weighted(parts: dict, weights: dict, d_loss: torch.Tensor):
        """(weighted generator total, detached parts for logging)."""
        total = sum(weights[name] * value for name, value in parts.items())
        return total, {**{f"g_{k}": v.detach() for k, v in parts.items()}, "d_adversarial": d_loss.detach()}

    def _inpaint_losses(self, image, mask, pred, d_optimizer):
        """D_I step, then G_I's loss: L1 + adversarial + perceptual + style (EdgeConnect's weights)."""
        weights = self.loss_config["inpaint"]
        d_loss = self.adversarial.discriminator(
            self.inpaint_discriminator(image)[0], self.inpaint_discriminator(pred.detach())[0]
        )
        self._step(d_optimizer, d_loss, "inpaint discriminator")
        parts = {
            "l1": (pred - image).abs().mean() / mask.mean().clamp_min(1e-3),
            "adversarial": self.adversarial.generator(self.inpaint_discriminator(pred)[0]),
        }
        if self.perceptual_style is not None:
            parts["perceptual"], parts["style"] = self.perceptual_style(pred, image, mask)
        return self._weighted(parts, weights, d_loss)

    # ----------------------------------------------------------------- evaluation
    def _evaluate(self, batch: dict, prefix: str) -> dict:
        image, mask = batch["image"], batch["mask"]
        size = tuple(image.shape[-2:])
        if "inpaint" not in self.stages:  # mode=shape: score the guide alone
            image_masked = masked_input(image, mask, self.hparams.hole_fill)
            gt_guide = self.guide.compute(image)
            predicted, merged = self.predict_guide(image_masked, self.guide.compute(image_masked), mask)
            hole = self.guide.hole_mask(mask)
            l1 = ((predicted - gt_guide).abs() * hole).sum() / (hole.sum() * predicted.shape[1]).clamp_min(1)
            self.log(f"{prefix}/guide_l1", l1, batch_size=image.shape[0], sync_dist=True)
            return {
                "masked": image_masked,
                "guide": self.guide.render(merged, size),
                "guide_gt": self.guide.render(gt_guide, size),
                "image": image,
            }
        ground_truth_guide = (
            self.guide.compute(image) if self.stages == ("inpaint",) and self.guide.channels else None
        )
        out = self.inpaint(image, mask, ground_truth_guide)
        unit_composite, unit_image = to_unit_range(out["composite"]), to_unit_range(image)
        self.val_psnr(unit_composite, unit_image)
        self.val_ssim(unit_composite, unit_image)
        zero_filled = composite(torch.zeros_like(image), image, mask)  # the floor any model must beat
        self.val_psnr_masked(to_unit_range(zero_filled), unit_image)
        batch_size = image.shape[0]
        self.log(f"{prefix}/psnr", self.val_psnr, batch_size=batch_size, prog_bar=True)
        self.log(f"{prefix}/ssim", self.val_ssim, batch_size=batch_size)
        self.log(f"{prefix}/psnr_zero_fill", self.val_psnr_masked, batch_size=batch_size)
        visuals = {
            "masked": out["masked"],
            "pred": out["pred"],
            "composite": out["composite"],
            "image": image,
        }
        if self.guide.channels:
            visuals["guide"] = self.guide.render(out["guide"], size)
        return visuals

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "test")
