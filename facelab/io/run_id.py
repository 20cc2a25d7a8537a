"""A tracker run id kept in the run directory, so that a requeued or resumed job continues the same run."""

from __future__ import annotations

import os
import secrets
import string
import tempfile
from pathlib import Path

ID_ALPHABET = string.ascii_lowercase + string.digits  # the alphabet of wandb's own generated ids


def new_run_id(length: int = 8) -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


def persistent_run_id(path: str | Path, proposed: str | None = None) -> str:
    """The id stored at `path`. The first call stores `proposed` (or a new id) there; later calls, from a
    requeued job or a restart in the same run directory, read it back.

    The file is written to a temp file and hard-linked into place: `os.link` refuses to overwrite, so when
    several ranks start at once the first one wins and every rank reads back the same, complete id.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as temp_file:
                temp_file.write(proposed or new_run_id())
                temp_file.flush()
                os.fsync(temp_file.fileno())
            try:
                os.link(temp_name, path)
            except FileExistsError:
                pass  # another process stored its id first; use that one
        finally:
            Path(temp_name).unlink(missing_ok=True)
    run_id = path.read_text().strip()
    if not run_id:
        raise ValueError(f"{path} is empty; delete it to start a new tracker run, or write the run id in it.")
    return run_id
