"""Sample grids of the first validation batch: one row per item, one column per stage of the cascade."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid

from facelab.io.images import save_image, to_uint8

COLUMNS = ("masked", "guide", "guide_gt", "pred", "composite", "image")


class ImageGrid(pl.Callback):
    """Saves `<dirpath>/<stage>_epoch<E>_step<S>.png` atomically and logs it to TensorBoard / wandb."""

    def __init__(self, dirpath: str, max_items: int = 8, every_n_epochs: int = 1):
        self.dirpath, self.max_items, self.every_n_epochs = Path(dirpath), max_items, every_n_epochs
        self.saved: list[Path] = []

    def grid(self, visuals: dict) -> torch.Tensor:
        """`[3, H', W']` in [-1, 1]: columns in COLUMNS order, gray guides shown as RGB."""
        columns = [visuals[name][: self.max_items].float() for name in COLUMNS if name in visuals]
        columns = [
            c.mul(2).sub(1).expand(-1, 3, -1, -1) if c.shape[1] == 1 else c for c in columns
        ]  # [0,1] guides
        tiles = torch.stack(columns, dim=1).flatten(0, 1)  # item-major: row i holds item i's columns
        return make_grid(tiles.clamp(-1, 1), nrow=len(columns), padding=2, pad_value=1.0)

    def _handle(self, trainer, outputs, batch_idx, stage):
        if batch_idx != 0 or not isinstance(outputs, dict) or trainer.sanity_checking:
            return
        if stage == "val" and trainer.current_epoch % self.every_n_epochs:
            return
        self._write(trainer, self.grid(outputs), stage)

    @rank_zero_only
    def _write(self, trainer, grid: torch.Tensor, stage: str) -> None:
        path = self.dirpath / f"{stage}_epoch{trainer.current_epoch:03d}_step{trainer.global_step:07d}.png"
        save_image(to_uint8(grid), path)
        self.saved.append(path)
        caption = "rows: items; columns: " + ", ".join(COLUMNS)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"{stage}/samples", grid.add(1).div(2), trainer.global_step)
            elif isinstance(logger, WandbLogger):
                logger.log_image(f"{stage}/samples", [str(path)], step=trainer.global_step, caption=[caption])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._handle(trainer, outputs, batch_idx, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._handle(trainer, outputs, batch_idx, "test")
