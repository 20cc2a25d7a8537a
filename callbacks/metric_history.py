"""A table of every validation's metrics over the run: `val_history.csv` and `val_history.md`."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from facelab.io.images import atomic_write_bytes


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
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.dirpath / f"{self.prefix}_history.csv", buffer.getvalue().encode())
        atomic_write_bytes(
            self.dirpath / f"{self.prefix}_history.md", markdown_table(self.rows, columns).encode()
        )

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub-flavoured markdown table; floats with 4 decimals."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "inf" if math.isinf(value) else f"{value:.4f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
