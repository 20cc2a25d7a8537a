"""One summary table per multirun: each job's overrides and final metrics, as CSV and markdown.

Registered as a Hydra callback (`conf/hydra/default.yaml`), so every `-m` sweep, local or through a
launcher, ends with `<sweep dir>/summary.csv` and `summary.md`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

from facelab.io.tables import write_tables

log = logging.getLogger(__name__)


def collect_runs(sweep_dir: Path) -> list[dict]:
    """One row per job folder: `job`, each override `key=value` as a column, each final metric."""
    rows = []
    for job_dir in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)
    ):
        overrides_file, metrics_file = job_dir / ".hydra" / "overrides.yaml", job_dir / "final_metrics.json"
        if not overrides_file.exists():
            continue
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        row = {"job": job_dir.name}
        row.update(dict(item.split("=", 1) for item in overrides if "=" in item))
        row["status"] = "done" if metrics_file.exists() else "failed or unfinished"
        if metrics_file.exists():
            row.update(json.loads(metrics_file.read_text()))
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path, rows: list[dict]) -> None:
    """`summary.csv` and `summary.md` in the sweep folder, written atomically."""
    write_tables(rows, sweep_dir / "summary")


class SweepSummary(Callback):
    """Hydra callback: after a multirun, tabulate its jobs."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = collect_runs(sweep_dir)
        write_summary(sweep_dir, rows)
        log.info("Sweep summary of %d runs: %s", len(rows), sweep_dir / "summary.md")
