"""Done records of a latent-fit job: what is finished, what to skip on a rerun, where to resume a chunk.

Layout under a job's output directory (every file is written by one process only, so array tasks never
race for a file):

    items/<item_id>/<stage>/<name>.png|.pt   an item's outputs of one stage, each written atomically
    items/<item_id>/<stage>/curves.csv       its loss terms at every step of that stage
    stages/<item_id>/<stage>.json            the stage's record, written atomically AFTER its outputs
    done/<item_id>.json                      the item's done record, written after its last stage's
    attempts/<host>-<pid>.jsonl              append-only log of each process's chunk starts and completions
    partial/<stage chunk key>/*.ckpt         a chunk's checkpoints while a stage runs (removed once recorded)

A stage of an item is done exactly when its record exists, the item when its done record exists; a crash
between outputs and record only means that stage is fitted again and its outputs overwritten with the same
result. A rerun resumes every item at its first stage without a record.
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


def chunk_key(item_ids: Iterable[str], stage: str = "") -> str:
    """Names a chunk by its stage and members: a rerun that forms the same chunk finds its checkpoints."""
    return hashlib.sha1("\n".join([stage, *item_ids]).encode()).hexdigest()[:16]


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
        self.context: dict = {}  # added to every logged event (the job sets this process's shard)

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
        line = {
            "event": event,
            "items": list(item_ids),
            "time": time.time(),
            **job_context(),
            **self.context,
            **fields,
        }
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

    def start_counts(self, stage: str | None = None) -> Counter:
        """How many times each item has been started (in `stage`, if given), over every process and rerun."""
        return Counter(
            item
            for event in self.events()
            if event["event"] == "start" and (stage is None or event.get("stage") == stage)
            for item in event["items"]
        )

    def stage_dir(self, item_id: str, stage: str) -> Path:
        return self.item_dir(item_id) / stage

    def stage_record_path(self, item_id: str, stage: str) -> Path:
        return self.root / "stages" / item_id / f"{stage}.json"

    def is_stage_done(self, item_id: str, stage: str) -> bool:
        return self.stage_record_path(item_id, stage).is_file()

    def write_stage_outputs(
        self, item_id: str, stage: str, outputs: Mapping[str, torch.Tensor], image_names: Iterable[str]
    ) -> list[str]:
        """One item's tensors of one stage: names in `image_names` as PNG (`[3, H, W]` in [-1, 1] or
        `[1, H, W]` masks in [0, 1]), the others as .pt (each written atomically)."""
        return [
            str(p.relative_to(self.root))
            for p in write_tensors(self.stage_dir(item_id, stage), outputs, image_names)
        ]

    def read_stage_outputs(self, item_id: str, stage: str) -> dict[str, torch.Tensor]:
        """The .pt outputs of a recorded stage (what a later stage reads)."""
        folder = self.stage_dir(item_id, stage)
        if not self.is_stage_done(item_id, stage):
            raise FileNotFoundError(
                f"Item {item_id!r} has no record of stage {stage!r} under {self.root}; run that stage first "
                "(a rerun of the job does it) before the stages that read it."
            )
        return {
            path.stem: torch.load(path, map_location="cpu", weights_only=True)
            for path in sorted(folder.glob("*.pt"))
        }

    def write_curves(self, item_id: str, stage: str, rows: list[dict]) -> str:
        """The item's loss terms per step of `stage` as CSV (written atomically)."""
        path = self.stage_dir(item_id, stage) / "curves.csv"
        atomic_write_bytes(path, curves_csv(rows))
        return str(path.relative_to(self.root))

    def write_stage_done(self, item_id: str, stage: str, record: dict) -> None:
        """The stage's record; call it only after every output of the stage is written."""
        document = {"item_id": item_id, "stage": stage, **record, **job_context(), "finished_at": time.time()}
        atomic_write_bytes(
            self.stage_record_path(item_id, stage), json.dumps(document, indent=1, sort_keys=True).encode()
        )

    def write_done(self, item_id: str, record: dict) -> None:
        """The item's done record; call it only after every output of the item is written."""
        document = {"item_id": item_id, **record, **job_context(), "finished_at": time.time()}
        atomic_write_bytes(self.record_path(item_id), json.dumps(document, indent=1, sort_keys=True).encode())

    def chunk_dir(self, item_ids: list[str], stage: str = "") -> Path:
        return self.root / "partial" / chunk_key(item_ids, stage)

    def resume_checkpoint(self, item_ids: list[str], steps: int, stage: str = "") -> str | None:
        """This chunk's readable checkpoint furthest along but short of `steps`, else None (start afresh).
        Of two at the same step (a preemption save right after a periodic one) the newer is taken."""
        best, best_step = None, -1
        paths = sorted(self.chunk_dir(item_ids, stage).glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
        for path in paths:
            try:
                step = int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
            except Exception as error:  # a file cut short by a kill: another one (or step 0) will do
                log.warning("Ignoring unreadable fit checkpoint %s (%s).", path, error)
                continue
            if best_step <= step < steps:
                best, best_step = str(path), step
        return best

    def finish_chunk(self, item_ids: list[str], stage: str = "") -> None:
        """Drop a recorded chunk's checkpoints."""
        shutil.rmtree(self.chunk_dir(item_ids, stage), ignore_errors=True)


def curves_csv(rows: list[dict]) -> bytes:
    """Loss curves as CSV: a `step` column and one per loss term (the `item_id` column is dropped)."""
    columns = list(dict.fromkeys(key for row in rows for key in row if key != "item_id"))
    cell = lambda v: "" if v is None else (f"{v:.8g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [",".join(columns)] + [",".join(cell(row.get(c)) for c in columns) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def write_tensors(
    folder: Path, outputs: Mapping[str, torch.Tensor], image_names: Iterable[str]
) -> list[Path]:
    """Tensors into `folder`: names in `image_names` as PNG, the others as .pt; each written atomically."""
    written, image_names = [], set(image_names)
    for name, tensor in outputs.items():
        if name in image_names:
            path = folder / f"{name}.png"
            image = tensor.detach().float().cpu()
            if image.shape[0] == 1:  # a mask in [0, 1] -> grey levels
                image = image.repeat(3, 1, 1) * 2 - 1
            save_image(to_uint8(image), path)
        else:
            path, buffer = folder / f"{name}.pt", io.BytesIO()
            torch.save(tensor.detach().cpu().clone(), buffer)  # clone: save the slice, not the batch
            atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written
