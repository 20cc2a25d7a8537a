"""Progress of a latent-fit job: items done / left in this shard and in the whole manifest."""

from __future__ import annotations

import logging
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("facelab")


class FitProgress:
    """A Rich bar on a terminal; one log line per chunk otherwise (Slurm output files, CI logs, pipes).

    `overall_done` is called after each chunk and returns how many items of the whole manifest are
    recorded, so other shards' progress shows too.
    """

    def __init__(
        self,
        shard: str,
        shard_total: int,
        shard_done: int,
        overall_total: int,
        overall_done: Callable[[], int],
        mode: str = "auto",
    ):
        if mode not in ("auto", "bar", "lines"):
            raise ValueError(f"progress={mode!r}; use auto, bar or lines.")
        self.console = Console(stderr=True)
        self.use_bar = mode == "bar" or (mode == "auto" and self.console.is_terminal)
        self.shard, self.shard_total, self.done = shard, shard_total, shard_done
        self.overall_total, self.overall_done = overall_total, overall_done
        self.progress: Progress | None = None

    def _overall(self) -> str:
        return f"all shards {self.overall_done()}/{self.overall_total}"

    def __enter__(self) -> FitProgress:
        if self.use_bar:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[overall]}"),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                self.shard, total=self.shard_total, completed=self.done, overall=self._overall()
            )
        else:
            self._line("starting")
        return self

    def advance(self, count: int, seconds: float) -> None:
        """`count` more items recorded, their chunk having taken `seconds`."""
        self.done += count
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done, overall=self._overall())
        else:
            self._line(f"chunk of {count} in {seconds:.1f} s")

    def _line(self, what: str) -> None:
        log.info(
            "%s: %d/%d items done, %d left (%s) - %s",
            self.shard,
            self.done,
            self.shard_total,
            self.shard_total - self.done,
            self._overall(),
            what,
        )

    def __exit__(self, *exc_info) -> None:
        if self.progress is not None:
            self.progress.stop()
