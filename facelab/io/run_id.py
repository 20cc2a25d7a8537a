"""A tracker run id kept in the run directory, so that a requeued or resumed job continues the same run."""

from __future__ import annotations

import secrets
import string
from pathlib import Path

from facelab.io.files import write_once

ID_ALPHABET = string.ascii_lowercase + string.digits  # the alphabet of wandb's own generated ids


def new_run_id(length: int = 8) -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


def persistent_run_id(path: str | Path, proposed: str | None = None) -> str:
    """The id stored at `path`. The first call stores `proposed` (or a new id) there; later calls, from a
    requeued job or a restart in the same run directory, read it back. When several ranks start at once
    the first one's id wins and every rank reads back the same, complete id."""
    path = Path(path)
    write_once(path, (proposed or new_run_id()).encode())
    run_id = path.read_text().strip()
    if not run_id:
        raise ValueError(f"{path} is empty; delete it to start a new tracker run, or write the run id in it.")
    return run_id
