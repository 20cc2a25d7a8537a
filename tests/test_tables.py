"""Row tables as CSV and markdown (metric history, sweep summaries, metric reports)."""

import csv
import math

from facelab.io.tables import markdown_text, write_tables


def test_write_tables_unions_columns_and_formats_cells(tmp_path):
    rows = [{"job": "0", "psnr": 21.123456}, {"job": "1", "ssim": 0.5, "psnr": math.inf, "note": None}]
    csv_path, md_path = write_tables(rows, tmp_path / "summary")
    assert (csv_path.name, md_path.name) == ("summary.csv", "summary.md")
    read = list(csv.DictReader(open(csv_path)))
    assert list(read[0]) == ["job", "psnr", "ssim", "note"]
    assert (
        [r["psnr"] for r in read] == ["21.123456", "inf"] and read[0]["ssim"] == "" and read[1]["note"] == ""
    )
    lines = md_path.read_text().splitlines()
    assert lines[0] == "| job | psnr | ssim | note |" and lines[1] == "|---|---|---|---|"
    assert lines[2] == "| 0 | 21.1235 |  |  |" and lines[3] == "| 1 | inf | 0.5000 |  |"
    assert not list(tmp_path.glob(".*tmp")), "no temp files left behind"


def test_markdown_keeps_the_requested_columns_only():
    assert markdown_text([{"a": 1, "b": 2.0}], ["b"]).splitlines() == ["| b |", "|---|", "| 2.0000 |"]
