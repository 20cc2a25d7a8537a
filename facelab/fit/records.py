"""Done records of a latent-fit job: what is finished, what to skip on a rerun, where to resume a chunk.

Layout under a job's output directory (every file is written by one process only, so array tasks never
race for a file):

    items/<item_id>/<name>.png|.pt   an item's outputs, each written atomically
    done/<item_id>.json              its done record, written atomically AFTER its outputs
    attempts/<host>-<pid>.jsonl      append-only log of each process's chunk starts and item completions
    partial/<chunk key>/*.ckpt       a chunk's fit checkpoints while it runs (removed once it is recorded)

An item is done exactly when its record exists; a crash between outputs and record only means the item
is fitted again and its outputs overwritten with the same result.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from facelab.io.files import atomic_write_bytes
from facelab.io.images import save_image, to_uint8

log = logging.getLogger("facelab")
SLURM_FIELDS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")


def item_seed(seed: int, item_id: str) -> int:
    """A seed of the item alone: its initial latent is the same in any batch and on any rank."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[:8], "little") >> 1


def chunk_key(item_ids: Iterable[str]) -> str:
    """Names a chunk by its members: a rerun that forms the same chunk finds its checkpoints again."""
    return hashlib.sha1("\n".join(item_ids).encode()).hexdigest()[:16]


def job_context() -> dict:
    """Where a record was written: host, process and the Slurm job / array task, if any."""
    context = {"host": socket.gethostname(), "pid": os.getpid()}
    context.update({name.lower(): os.environ[name] for name in SLURM_FIELDS if name in os.environ})
    return context


class FitRecords:
    """The done records, outputs, attempt log and chunk checkpoints of one job's output directory."""

    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir)
        self.attempt_log = self.root / "attempts" / f"{socket.gethostname()}-{os.getpid()}.jsonl"

    def record_path(self, item_id: str) -> Path:
        return self.root / "done" / f"{item_id}.json"

    def item_dir(self, item_id: str) -> Path:
        return self.root / "items" / item_id

    def is_done(self, item_id: str) -> bool:
        return self.record_path(item_id).is_file()

    def done_ids(self) -> set[str]:
        folder = self.root / "done"
        return {path.stem for path in folder.glob("*.json")} if folder.is_dir() else set()

    def read_record(self, item_id: str) -> dict:
        return json.loads(self.record_path(item_id).read_text())

    def log_event(self, event: str, item_ids: list[str], **fields) -> None:
        """Append one line to this process's attempt log (one `write` of a short line: never interleaved)."""
        self.attempt_log.parent.mkdir(parents=True, exist_ok=True)
        line = {"event": event, "items": list(item_ids), "time": time.time(), **job_context(), **fields}
        with self.attempt_log.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def events(self) -> list[dict]:
        """Every process's logged events (a line cut short by a kill is skipped)."""
        events = []
        for path in sorted((self.root / "attempts").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events

    def start_counts(self) -> Counter:
        """How many times each item has been started, over every process and rerun."""
        return Counter(
            item for event in self.events() if event["event"] == "start" for item in event["items"]
        )

    def write_outputs(
        self, item_id: str, outputs: Mapping[str, torch.Tensor], image_names: Iterable[str]
    ) -> list[str]:
        """Write one item's tensors: names in `image_names` as PNG (`[3, H, W]` in [-1, 1]), others as .pt."""
        folder, written, image_names = self.item_dir(item_id), [], set(image_names)
        for name, tensor in outputs.items():
            if name in image_names:
                path = folder / f"{name}.png"
                save_image(to_uint8(tensor), path)
            else:
                path, buffer = folder / f"{name}.pt", io.BytesIO()
                torch.save(tensor.detach().cpu().clone(), buffer)  # clone: save the slice, not the batch
                atomic_write_bytes(path, buffer.getvalue())
            written.append(str(path.relative_to(self.root)))
        return written

    def write_done(self, item_id: str, record: dict) -> None:
        """The item's done record; call it only after every output of the item is written."""
        document = {"item_id": item_id, **record, **job_context(), "finished_at": time.time()}
        atomic_write_bytes(self.record_path(item_id), json.dumps(document, indent=1, sort_keys=True).encode())

    def chunk_dir(self, item_ids: list[str]) -> Path:
        return self.root / "partial" / chunk_key(item_ids)

    def resume_checkpoint(self, item_ids: list[str], steps: int) -> str | None:
        """This chunk's readable checkpoint furthest along but short of `steps`, else None (start afresh)."""
        best, best_step = None, -1
        for path in sorted(self.chunk_dir(item_ids).glob("*.ckpt")):
            try:
                step = int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
            except Exception as error:  # a file cut short by a kill: another one (or step 0) will do
                log.warning("Ignoring unreadable fit checkpoint %s (%s).", path, error)
                continue
            if best_step < step < steps:
                best, best_step = str(path), step
        return best

    def finish_chunk(self, item_ids: list[str]) -> None:
        """Drop a recorded chunk's checkpoints."""
        shutil.rmtree(self.chunk_dir(item_ids), ignore_errors=True)
