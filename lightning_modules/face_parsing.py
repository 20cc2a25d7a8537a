"""Face-parsing training: BiSeNet with its two auxiliary heads, as zllrunning/face-parsing.PyTorch trains it.

Per step: the main head and the aux heads on the context path's 1/8 and 1/16 features, each upsampled to
the image and scored with OHEM cross-entropy (or plain cross-entropy), summed. SGD with momentum, weight
decay on conv weights only, 10x lr on the fusion module and the heads, exponential warm-up then poly decay
(face-parsing.PyTorch `optimizer.py`). Validation accumulates a confusion matrix over the whole split
(summed over ranks) and reports IoU per class and mIoU. `export_parser` writes the bare BiSeNet state
dict, which `facelab.nets.bisenet.load_bisenet` reads.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from datamodules.face_render import CELEBAMASK_HQ_CLASSES
from facelab.io.files import atomic_write_bytes
from facelab.losses.face_parsing import parsing_loss
from facelab.metrics.segmentation import confusion_matrix, iou_per_class
from facelab.nets.bisenet import BiSeNet, normalize

LOSS_DEFAULTS = dict(kind="ohem", thresh=0.7, n_min_fraction=1 / 16, aux_weight=1.0)
OPTIM_DEFAULTS = dict(lr=1e-2, momentum=0.9, weight_decay=5e-4, head_lr_multiplier=10.0, power=0.9,
                      warmup_steps=1000, warmup_start_lr=1e-5, max_steps=None)
HEAD_MODULES = ("ffm", "conv_out", "conv_out16", "conv_out32")  # face-parsing.PyTorch get_params: lr x10


def parameter_groups(net: BiSeNet, weight_decay: float) -> list[dict]:
    """Four SGD groups as face-parsing.PyTorch: conv/linear weights decay, biases and batch-norm parameters
    do not; the fusion module and the heads train at `head` lr (their `lr_mul` flag)."""
    groups = {(head, decay): [] for head in (False, True) for decay in (True, False)}
    for child_name, child in net.named_children():
        head = child_name in HEAD_MODULES
        for module in child.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                groups[head, True].append(module.weight)
                if module.bias is not None:
                    groups[head, False].append(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                groups[head, False].extend(module.parameters())
    assert sum(len(p) for p in groups.values()) == len(list(net.parameters())), "a parameter has no group"
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "head": head}
            for (head, decay), params in groups.items() if params]


def warmup_poly_factor(step: int, lr: float, warmup_steps: int, warmup_start_lr: float, max_steps: int,
                       power: float) -> float:
    """lr(step) / lr: exponential warm-up from warmup_start_lr to lr, then (1 - progress) ** power."""
    if step <= warmup_steps and warmup_steps > 0:
        return warmup_start_lr * (lr / warmup_start_lr) ** (step / warmup_steps) / lr
    progress = (step - warmup_steps) / max(max_steps - warmup_steps, 1)
    return max(1 - progress, 0.0) ** power


class FaceParsingTraining(pl.LightningModule):
    """Trains a BiSeNet on batches with `image` [B, 3, H, W] in [-1, 1] and `parsing` [B, H, W] long."""

    def __init__(self, n_classes: int = 19, loss: dict | None = None, optim: dict | None = None,
                 class_names: list[str] | None = None, export_path: str | None = None, width: int = 64):
        super().__init__()
        self.save_hyperparameters()
        self.loss_config = {**LOSS_DEFAULTS, **(loss or {})}
        self.optim_config = {**OPTIM_DEFAULTS, **(optim or {})}
        names = class_names or (CELEBAMASK_HQ_CLASSES if n_classes == len(CELEBAMASK_HQ_CLASSES) else None)
        self.class_names = list(names or [f"class{i}" for i in range(n_classes)])
        if len(self.class_names) != n_classes:
            raise ValueError(f"model.class_names: {len(self.class_names)} names for n_classes={n_classes}.")
        self.net = BiSeNet(n_classes, width=width)
        confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)  # [true, predicted], val split
        self.register_buffer("confusion", confusion, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_classes, H, W] for images in [-1, 1]."""
        return self.net(normalize(images))

    def configure_optimizers(self):
        config = self.optim_config
        groups = parameter_groups(self.net, config["weight_decay"])
        for group in groups:
            group["lr"] = config["lr"] * (config["head_lr_multiplier"] if group.pop("head") else 1.0)
        optimizer = torch.optim.SGD(groups, lr=config["lr"], momentum=config["momentum"])
        max_steps = config["max_steps"] or int(self.trainer.estimated_stepping_batches)
        schedule = dict(lr=config["lr"], warmup_steps=min(config["warmup_steps"], max_steps),
                        warmup_start_lr=config["warmup_start_lr"], max_steps=max_steps, power=config["power"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_poly_factor(step, **schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, labels = batch["image"], batch["parsing"]
        heads = self.net(normalize(image), return_aux=True)
        total, parts = parsing_loss(heads, labels, **self.loss_config)
        batch_size = image.shape[0]
        self.log_dict({f"train/loss_{k}": v for k, v in parts.items()}, on_step=True, on_epoch=False,
                      batch_size=batch_size)
        self.log("train/loss", total.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=True)
        return total

    def on_validation_epoch_start(self) -> None:
        self.confusion.zero_()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        predicted = self(batch["image"]).argmax(dim=1)  # [B, H, W]
        self.confusion += confusion_matrix(predicted, batch["parsing"], self.hparams.n_classes)

    def on_validation_epoch_end(self) -> None:
        """IoU per class (`val/iou/<class>`, classes that occur) and `val/miou`, over the whole split."""
        confusion = self.trainer.strategy.reduce(self.confusion.clone(), reduce_op="sum")
        ious = iou_per_class(confusion)
        present = ~ious.isnan()
        self.log("val/miou", ious[present].mean().float(), prog_bar=True)
        for name, iou in zip(self.class_names, ious, strict=True):
            if not iou.isnan():
                self.log(f"val/iou/{name}", iou.float())
        if self.hparams.export_path and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            save_parser(self.net, self.hparams.export_path)


def save_parser(net: BiSeNet, path: str | Path) -> None:
    """The bare state dict, written atomically: what `load_bisenet` reads (the reference repos' format)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def export_parser(checkpoint_path: str | Path, output_path: str | Path) -> None:
    """Write the BiSeNet of a FaceParsingTraining checkpoint as a bare state dict for `load_bisenet`."""
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path} does not exist; give a face-parsing training checkpoint "
                                "(<run dir>/checkpoints/last.ckpt).")
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True).get("state_dict", {})
    net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    if "conv_out.conv_out.weight" not in net_state:
        raise ValueError(f"{checkpoint_path} is not a FaceParsingTraining checkpoint (no net.* BiSeNet "
                         "weights).")
    net = BiSeNet(n_classes=net_state["conv_out.conv_out.weight"].shape[0],
                  width=net_state["cp.resnet.conv1.weight"].shape[0])
    net.load_state_dict(net_state, strict=True)
    save_parser(net, output_path)
