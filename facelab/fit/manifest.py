"""Manifests of latent-fit jobs (a YAML list, a CSV or a folder of images) and their split into shards.

An item is one independent latent search (one face to embed, one drag edit). Its `item_id` names its
outputs and its done record, so it must be stable across reruns and unique within the manifest.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from facelab.io.images import IMAGE_EXTENSIONS, list_images

MANIFEST_SUFFIXES = (".yaml", ".yml", ".csv")
_FORBIDDEN_IN_ID = ("/", "\\", "\0")


class ManifestError(ValueError):
    """A manifest that cannot be read as items; the message names the file, the item and the fix."""


@dataclass(frozen=True)
class Columns:
    """Which keys a fit method's items have: `required` ones, `optional` ones, which of them are paths, and
    which optional ones take another column's value when absent (`fallbacks`: Barbershop's appearance
    reference is its shape reference unless given).

    A folder manifest fills the first required column with each image's path.
    """

    required: tuple[str, ...] = ("image",)
    optional: tuple[str, ...] = ()
    paths: tuple[str, ...] = ("image",)
    fallbacks: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, spec: Mapping | None) -> Columns:
        spec = spec or {}
        lists = {key: tuple(spec.get(key, getattr(cls, key))) for key in ("required", "optional", "paths")}
        return cls(**lists, fallbacks=tuple((spec.get("fallbacks") or {}).items()))

    @property
    def allowed(self) -> tuple[str, ...]:
        return ("item_id", *self.required, *self.optional)


@dataclass(frozen=True)
class FitItem:
    """One manifest entry: its id, its values (paths resolved and checked) and where it came from."""

    item_id: str
    values: dict = field(hash=False)
    source: str = field(default="", compare=False)


def read_manifest(manifest: str | Path, columns: Columns = Columns()) -> list[FitItem]:
    """The items of a YAML list, a CSV file or a folder of images, in manifest order."""
    path = Path(manifest)
    if not path.exists():
        raise ManifestError(
            f"Manifest {path} does not exist. "
            "Give manifest=<a .yaml list, a .csv file or a folder of images>."
        )
    if path.is_dir():
        rows = [({columns.required[0]: str(image.resolve())}, f"{image}") for image in list_images(path)]
        base = path.resolve()
    elif path.suffix.lower() in (".yaml", ".yml"):
        rows, base = _yaml_rows(path, columns), path.parent.resolve()
    elif path.suffix.lower() == ".csv":
        rows, base = _csv_rows(path), path.parent.resolve()
    else:
        raise ManifestError(
            f"Manifest {path} is neither a folder nor one of {', '.join(MANIFEST_SUFFIXES)}; "
            f"a single image ({', '.join(IMAGE_EXTENSIONS)}) goes in a folder or a one-line YAML list."
        )
    if not rows:
        raise ManifestError(f"Manifest {path} lists no items.")
    items = [_make_item(values, source, base, columns, path) for values, source in rows]
    _check_unique(items, path)
    return items


def _yaml_rows(path: Path, columns: Columns) -> list[tuple[dict, str]]:
    try:
        entries = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ManifestError(f"Manifest {path} is not valid YAML ({error}).") from error
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ManifestError(f"Manifest {path} must be a YAML list of items, not a {type(entries).__name__}.")
    rows = []
    for index, entry in enumerate(entries):
        source = f"{path} entry {index}"
        if isinstance(entry, str) and len(columns.required) == 1:
            entry = {columns.required[0]: entry}  # a bare path stands for the one required column
        if not isinstance(entry, dict):
            raise ManifestError(
                f"{source} is {entry!r}; each entry must be a mapping with keys {list(columns.allowed)}."
            )
        rows.append((entry, source))
    return rows


def _csv_rows(path: Path) -> list[tuple[dict, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            return []
        # line numbers count the header as line 1, as a spreadsheet shows them
        rows = [
            ({key: value for key, value in row.items() if value not in (None, "")}, f"{path} line {line}")
            for line, row in enumerate(reader, start=2)
        ]
        if any(None in values for values, _ in rows):
            raise ManifestError(f"Manifest {path} has a row with more cells than header columns.")
        return rows


def _make_item(values: dict, source: str, base: Path, columns: Columns, manifest: Path) -> FitItem:
    unknown = sorted(set(values) - set(columns.allowed))
    if unknown:
        raise ManifestError(
            f"{source}: unknown column(s) {unknown}. This fit method reads {list(columns.allowed)}; "
            "rename or drop the others."
        )
    missing = [key for key in columns.required if key not in values]
    if missing:
        raise ManifestError(
            f"{source}: missing required column(s) {missing} (columns: {list(columns.allowed)})."
        )
    values = dict(values)
    for key in columns.paths:
        if key in values:
            resolved = Path(str(values[key])).expanduser()
            resolved = resolved if resolved.is_absolute() else base / resolved
            if not resolved.exists():
                raise ManifestError(
                    f"{source}: {key}={values[key]!r} does not exist (looked for {resolved}; relative paths "
                    f"are taken from the manifest's folder {base})."
                )
            values[key] = str(resolved)
    for column, source_column in columns.fallbacks:
        values.setdefault(column, values[source_column])
    item_id = str(values.pop("item_id", "") or Path(str(values[columns.required[0]])).stem)
    if not item_id or item_id.startswith(".") or any(c in item_id for c in _FORBIDDEN_IN_ID):
        raise ManifestError(
            f"{source}: item_id {item_id!r} cannot name a file (it names the item's outputs and record); "
            "give an item_id without '/' that does not start with '.'."
        )
    return FitItem(item_id, values, source)


def _check_unique(items: Sequence[FitItem], manifest: Path) -> None:
    sources: dict[str, list[str]] = {}
    for item in items:
        sources.setdefault(item.item_id, []).append(item.source)
    duplicates = {item_id: where for item_id, where in sources.items() if len(where) > 1}
    if duplicates:
        listed = "; ".join(f"{item_id!r} from {', '.join(where)}" for item_id, where in duplicates.items())
        raise ManifestError(
            f"Manifest {manifest} has duplicate item ids: {listed}. Ids default to the file stem; "
            "give an explicit item_id column (or rename the files) so that each item's outputs are its own."
        )


@dataclass(frozen=True)
class Shard:
    """This process's share of the manifest: items `rank`, `rank + world`, ... (`source` says why)."""

    rank: int
    world: int
    source: str = field(default="default", compare=False)

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(
                f"Shard rank {self.rank} of world {self.world} (from {self.source}) is out of range; "
                "a world of N shards has ranks 0..N-1. Check --array / shard.rank / shard.world."
            )

    def select(self, items: Sequence) -> list:
        """Round robin: deterministic, disjoint across ranks, and balanced to within one item."""
        return list(items[self.rank :: self.world])


def resolve_shard(rank: int | None = None, world: int | None = None, env: Mapping | None = None) -> Shard:
    """This process's shard, from config, else a Slurm job array, Slurm tasks or torchrun-style env.

    In a job array the task's position in the array is its rank (`(TASK_ID - TASK_MIN) / TASK_STEP`) and the
    array's size the world. With `world` given, the task id itself is the rank: a single task can then be
    rerun as `sbatch --array=<k>` with `shard.world=N`. Tasks of one array task (`srun -n M`) split its
    shard further by `SLURM_PROCID`.
    """
    env = os.environ if env is None else env
    if rank is not None:
        if world is None:
            raise ValueError(
                "shard.rank is set but shard.world is not; give both (e.g. shard.rank=3 shard.world=8)."
            )
        return Shard(rank, world, "config shard.rank/shard.world")
    tasks, procid = int(env.get("SLURM_NTASKS", 1)), int(env.get("SLURM_PROCID", 0))
    if "SLURM_ARRAY_TASK_ID" in env:
        task_id = int(env["SLURM_ARRAY_TASK_ID"])
        if world is not None:
            return Shard(
                task_id * tasks + procid, world * tasks, f"SLURM_ARRAY_TASK_ID={task_id}, shard.world"
            )
        first, step = int(env.get("SLURM_ARRAY_TASK_MIN", 0)), int(env.get("SLURM_ARRAY_TASK_STEP", 1))
        count = env.get("SLURM_ARRAY_TASK_COUNT")
        count = int(count) if count else (int(env.get("SLURM_ARRAY_TASK_MAX", task_id)) - first) // step + 1
        array_rank = (task_id - first) // step
        return Shard(array_rank * tasks + procid, count * tasks, f"SLURM_ARRAY_TASK_ID={task_id} of {count}")
    if "SLURM_PROCID" in env and tasks > 1:
        return Shard(procid, world or tasks, f"SLURM_PROCID={procid} of SLURM_NTASKS={tasks}")
    if "RANK" in env and "WORLD_SIZE" in env:
        return Shard(int(env["RANK"]), world or int(env["WORLD_SIZE"]), "RANK/WORLD_SIZE")
    return Shard(0, world or 1, "a single process")
