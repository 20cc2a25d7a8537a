"""Tables of rows (dicts) as CSV and markdown text, and both files written atomically side by side."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from facelab.io.files import atomic_write_bytes


def columns_of(rows: list[dict]) -> list[str]:
    """Every key of every row, in first-seen order (rows may differ in their keys)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """CSV with a header; a missing or None cell is empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=columns or columns_of(rows), lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def markdown_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured markdown table; finite floats with 4 decimals, None as an empty cell."""
    columns = columns or columns_of(rows)

    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float) and math.isfinite(value):
            return f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], stem: str | Path) -> tuple[Path, Path]:
    """`<stem>.csv` and `<stem>.md`, each replaced atomically."""
    stem = Path(stem)
    csv_path, markdown_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    columns = columns_of(rows)
    atomic_write_bytes(csv_path, csv_text(rows, columns).encode())
    atomic_write_bytes(markdown_path, markdown_text(rows, columns).encode())
    return csv_path, markdown_path
