"""Atomic and write-once files: an interrupted write leaves the old file and no temp file; the first writer
of a write-once file wins."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from facelab.io.files import atomic_write_bytes, write_once


def test_atomic_write_replaces_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "deep" / "table.csv"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # fails inside the write, after the temp file exists
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["table.csv"], "no temp file left behind"


def test_write_once_keeps_the_first_content_among_racing_writers(tmp_path):
    path = tmp_path / "run_id"
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda k: write_once(path, f"id{k}".encode()), range(32)))
    assert created.count(True) == 1
    assert path.read_bytes() == f"id{created.index(True)}".encode()
    assert write_once(path, b"other") is False and path.read_bytes() == f"id{created.index(True)}".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["run_id"]
