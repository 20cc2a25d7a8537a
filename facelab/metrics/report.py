"""Metric results as files and log entries: `metrics.json`, `metrics.csv`, a markdown table, a PNG plot.

Files are written atomically (temp file + `os.replace`), so a reader never sees half a report. JSON keeps
non-finite numbers as Python's `json` writes them (`NaN`, `Infinity`): an empty bucket has NaN metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from facelab.io.files import atomic_write_bytes
from facelab.io.tables import csv_text, markdown_text
from facelab.metrics.plot import plot_against_hole_ratio

GROUP_COLUMNS = ("group", "hole_ratio_low", "hole_ratio_high", "count")


def metric_columns(rows: list[dict]) -> list[str]:
    """The metric columns of `rows`, in their order."""
    return [key for key in rows[0] if key not in GROUP_COLUMNS] if rows else []


def group_slug(name: str) -> str:
    """A log-key-safe label: "overall", or "(0.1,0.2]" -> "hole_0.1-0.2"."""
    return "overall" if name == "overall" else "hole_" + name.strip("(]").replace(",", "-")


def flatten_for_logging(rows: list[dict], prefix: str) -> dict[str, float]:
    """`{prefix}/{metric}` for the overall row, `{prefix}/{metric}/{bucket}` per bucket; finite values only,
    stds left out (they are in the files and tables)."""
    flat = {}
    for row in rows:
        suffix = "" if row["group"] == "overall" else f"/{group_slug(row['group'])}"
        flat[f"{prefix}/count{suffix}"] = float(row["count"])
        for metric in metric_columns(rows):
            value = row[metric]
            if not metric.endswith("_std") and value is not None and math.isfinite(value):
                flat[f"{prefix}/{metric}{suffix}"] = float(value)
    return flat


def markdown_table(rows: list[dict]) -> str:
    """Group, count and metric means (4 decimals), one line per group."""
    return markdown_text(
        rows, ["group", "count", *[m for m in metric_columns(rows) if not m.endswith("_std")]]
    )


def write_report(
    rows: list[dict],
    directory: str | Path,
    stem: str = "metrics",
    context: dict | None = None,
    plot: bool = True,
) -> list[Path]:
    """Write `<stem>.json` (context + overall + buckets), `<stem>.csv` (one row per group) and, when there are
    buckets, `<stem>.png` (each metric against hole ratio). Returns the paths written."""
    directory = Path(directory)
    document = {**(context or {}), "overall": rows[0], "buckets": rows[1:]}
    written = [directory / f"{stem}.json", directory / f"{stem}.csv"]
    atomic_write_bytes(written[0], json.dumps(document, indent=2).encode())
    atomic_write_bytes(written[1], csv_text(rows, list(rows[0])).encode())
    if plot and len(rows) > 1:
        written.append(directory / f"{stem}.png")
        atomic_write_bytes(written[2], plot_against_hole_ratio(rows))
    return written
