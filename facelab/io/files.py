"""Writing files so that a crash, a kill or a second process never leaves a torn or mixed file behind, and
where per-user cache files go."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _temp_copy(path: Path, data: bytes):
    """`data` in a synced temp file beside `path` (same file system, so it can be moved or linked into
    place); the temp file is gone afterwards whatever happens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        yield temp_name
    finally:
        Path(temp_name).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` in one step (`os.replace` of a temp file): readers see the old file or
    the new one, never a half-written one."""
    path = Path(path)
    with _temp_copy(path, data) as temp_name:
        os.replace(temp_name, path)


def write_once(path: str | Path, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; True if this call created it. `os.link` refuses to
    overwrite, so when several processes race the first one wins and all read back the same content."""
    path = Path(path)
    if path.exists():
        return False
    with _temp_copy(path, data) as temp_name:
        try:
            os.link(temp_name, path)
        except FileExistsError:
            return False
    return True


def user_cache_dir(*parts: str) -> Path:
    """`$FACELAB_CACHE/<parts>` if set, else `$XDG_CACHE_HOME/facelab/<parts>`, else
    `~/.cache/facelab/<parts>`: derived data that may be deleted at any time (not created here)."""
    root = os.environ.get("FACELAB_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facelab"
    return Path(root).expanduser().joinpath(*parts)
