"""A table of every validation's metrics over the run: `val_history.csv` and `val_history.md`."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from facelab.io.tables import write_tables


class MetricHistory(pl.Callback):
    """After each validation, appends `epoch, step` and every `<prefix>/*` metric, rewriting both files
    atomically. Resumed fits continue the table (its rows travel in the checkpoint)."""

    def __init__(self, dirpath: str, prefix: str = "val"):
        self.dirpath, self.prefix = Path(dirpath), prefix
        self.rows: list[dict] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{self.prefix}/")
        }
        if metrics:
            self.rows.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics})
            self._write()

    @rank_zero_only
    def _write(self) -> None:
        write_tables(self.rows, self.dirpath / f"{self.prefix}_history")

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))
