"""Latent-fit manifests (YAML, CSV, folder), their errors, sharding across ranks, and done records."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.fit_items import FitItems
from datamodules.synthetic_faces import render_face
from facelab.fit.manifest import Columns, ManifestError, Shard, read_manifest, resolve_shard
from facelab.fit.progress import FitProgress
from facelab.fit.records import FitRecords, chunk_key, item_seed
from facelab.io.images import save_image


def make_faces(folder: Path, count: int, size: int = 32, prefix: str = "face") -> list[Path]:
    """`count` synthetic face PNGs named <prefix><k>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}{index}.png" for index in range(count)]
    for index, path in enumerate(paths):
        save_image(render_face(size, 0, index).image, path)
    return paths


def test_folder_manifest_ids_are_file_stems_in_sorted_order(tmp_path):
    make_faces(tmp_path / "faces", 3)
    items = read_manifest(tmp_path / "faces")
    assert [item.item_id for item in items] == ["face0", "face1", "face2"]
    assert items[1].values == {"image": str((tmp_path / "faces" / "face1.png").resolve())}


def test_yaml_manifest_resolves_paths_from_its_folder_and_keeps_explicit_ids(tmp_path):
    make_faces(tmp_path / "faces", 2)
    manifest = tmp_path / "job.yaml"
    manifest.write_text("- {item_id: alice, image: faces/face0.png}\n- faces/face1.png\n")
    items = read_manifest(manifest)
    assert [item.item_id for item in items] == ["alice", "face1"]
    assert items[0].values["image"] == str((tmp_path / "faces" / "face0.png").resolve())


def test_csv_manifest_with_optional_columns(tmp_path):
    make_faces(tmp_path / "faces", 2)
    manifest = tmp_path / "job.csv"
    manifest.write_text("image,item_id,note\nfaces/face0.png,,first\nfaces/face1.png,bob,\n")
    columns = Columns(required=("image",), optional=("note",), paths=("image",))
    items = read_manifest(manifest, columns)
    assert [item.item_id for item in items] == ["face0", "bob"]
    assert items[0].values["note"] == "first" and "note" not in items[1].values  # empty cell = absent


@pytest.mark.parametrize(
    "name, text, match",
    [
        (
            "bad.csv",
            "image,colour\nfaces/face0.png,red\n",
            r"bad.csv line 2: unknown column\(s\) \['colour'\]",
        ),
        (
            "missing.yaml",
            "- {item_id: a}\n",
            r"missing.yaml entry 0: missing required column\(s\) \['image'\]",
        ),
        ("gone.yaml", "- faces/nope.png\n", r"gone.yaml entry 0: image='faces/nope.png' does not exist"),
        (
            "dup.yaml",
            "- faces/face0.png\n- {item_id: face0, image: faces/face1.png}\n",
            r"duplicate item ids: 'face0' from .*dup.yaml entry 0, .*dup.yaml entry 1",
        ),
        ("slash.yaml", "- {item_id: a/b, image: faces/face0.png}\n", r"item_id 'a/b' cannot name a file"),
        ("dict.yaml", "image: faces/face0.png\n", r"must be a YAML list of items"),
        ("empty.csv", "", r"lists no items"),
        ("job.txt", "faces/face0.png\n", r"neither a folder nor one of .yaml, .yml, .csv"),
    ],
)
def test_bad_manifests_name_the_file_the_entry_and_the_fix(tmp_path, name, text, match):
    make_faces(tmp_path / "faces", 2)
    (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError, match=match):
        read_manifest(tmp_path / name)


def test_missing_manifest_and_duplicate_stems_in_subfolders(tmp_path):
    with pytest.raises(ManifestError, match=r"Manifest .*nowhere.yaml does not exist. Give manifest="):
        read_manifest(tmp_path / "nowhere.yaml")
    make_faces(tmp_path / "faces" / "a", 1)
    make_faces(tmp_path / "faces" / "b", 1)
    with pytest.raises(ManifestError, match=r"'face0' from .*a/face0.png, .*b/face0.png"):
        read_manifest(tmp_path / "faces")


def _array_env(task_id: int, first: int, count: int | None, last: int | None = None, step: int = 1) -> dict:
    env = {"SLURM_ARRAY_TASK_ID": str(task_id), "SLURM_ARRAY_TASK_MIN": str(first), "SLURM_NTASKS": "1"}
    env.update({"SLURM_PROCID": "0", "SLURM_ARRAY_TASK_STEP": str(step)})
    if count is not None:
        env["SLURM_ARRAY_TASK_COUNT"] = str(count)
    if last is not None:
        env["SLURM_ARRAY_TASK_MAX"] = str(last)
    return env


def _envs_of_world(kind: str, world: int) -> list[dict]:
    if kind == "array":  # --array=0-(world-1)
        return [_array_env(task, 0, world) for task in range(world)]
    if kind == "array_offset":  # --array=5-(world+4): ranks count from TASK_MIN
        return [_array_env(task, 5, world) for task in range(5, 5 + world)]
    if kind == "array_no_count":  # older Slurm: no TASK_COUNT, MAX - MIN + 1
        return [_array_env(task, 3, None, last=2 + world) for task in range(3, 3 + world)]
    if kind == "array_step":  # --array=0-(2*world-2):2
        return [_array_env(task, 0, world, step=2) for task in range(0, 2 * world, 2)]
    if kind == "srun":
        return [{"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world)} for rank in range(world)]
    return [{"RANK": str(rank), "WORLD_SIZE": str(world)} for rank in range(world)]  # torchrun / Lightning


@pytest.mark.parametrize(
    "kind", ["array", "array_offset", "array_no_count", "array_step", "srun", "torchrun"]
)
@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_cover_every_item_exactly_once(kind, world):
    items = [f"item{index}" for index in range(10)]
    shards = [resolve_shard(env=env) for env in _envs_of_world(kind, world)]
    assert sorted(shard.rank for shard in shards) == list(range(world))
    assert {shard.world for shard in shards} == {world}
    selected = [item for shard in shards for item in shard.select(items)]
    assert sorted(selected) == sorted(items)  # every item once: none lost, none twice
    assert max(map(len, (s.select(items) for s in shards))) - min(len(s.select(items)) for s in shards) <= 1


def test_array_tasks_times_srun_tasks_split_further():
    envs = [
        {**_array_env(task, 0, 2), "SLURM_NTASKS": "3", "SLURM_PROCID": str(proc)}
        for task in (0, 1)
        for proc in range(3)
    ]
    shards = [resolve_shard(env=env) for env in envs]
    assert sorted(s.rank for s in shards) == list(range(6)) and {s.world for s in shards} == {6}


def test_config_overrides_the_environment_and_a_pinned_world_makes_the_task_id_the_rank():
    env = _array_env(3, 3, 1)  # `sbatch --array=3`: a rerun of one task alone
    assert resolve_shard(env=env) == Shard(0, 1)  # on its own it would be a world of one...
    assert (resolve_shard(world=4, env=env).rank, resolve_shard(world=4, env=env).world) == (
        3,
        4,
    )  # ...not with it
    assert (resolve_shard(2, 5, env=env).rank, resolve_shard(2, 5, env=env).world) == (2, 5)
    assert resolve_shard(env={}) == Shard(0, 1)
    with pytest.raises(ValueError, match="rank 4 of world 4"):
        resolve_shard(4, 4, env={})
    with pytest.raises(ValueError, match="shard.rank is set but shard.world is not"):
        resolve_shard(1, None, env={})
    with pytest.raises(ValueError, match=r"Check --array"):
        resolve_shard(env=_array_env(9, 0, 4))  # a task id outside the array's count


def test_fit_items_load_this_shards_images_at_the_fit_size(tmp_path):
    make_faces(tmp_path / "faces", 5)
    items = FitItems(str(tmp_path / "faces"), image_size=16, shard_rank=1, shard_world=2)
    assert [item.item_id for item in items.items] == ["face1", "face3"]
    batch = items.batch(items.items)
    assert batch["image"].shape == (2, 3, 16, 16) and batch["meta"]["item_id"] == ["face1", "face3"]
    assert -1 <= batch["image"].min() < batch["image"].max() <= 1
    assert torch.equal(batch["image"][1], items.load_image(str(tmp_path / "faces" / "face3.png")))


def test_item_seeds_and_chunk_keys_depend_on_content_only():
    assert item_seed(0, "a") == item_seed(0, "a") != item_seed(0, "b") != item_seed(1, "b")
    assert chunk_key(["a", "b"]) == chunk_key(["a", "b"]) != chunk_key(["b", "a"])
    assert chunk_key(["a", "b"], "embed") != chunk_key(["a", "b"], "blend")


def test_records_outputs_then_done_and_count_attempts(tmp_path):
    records = FitRecords(tmp_path)
    records.log_event("start", ["a", "b"])
    records.log_event("start", ["b"], stage="blend")
    assert records.start_counts("blend") == {"b": 1} and records.start_counts("fit") == {}
    image, latent, mask = torch.zeros(3, 8, 8), torch.arange(4.0), torch.ones(1, 8, 8)
    outputs = {"render": image, "latents": latent, "mask": mask}
    files = records.write_stage_outputs("b", "fit", outputs, image_names=["render", "mask"])
    assert not records.is_stage_done("b", "fit")
    with pytest.raises(FileNotFoundError, match="no record of stage 'fit'"):
        records.read_stage_outputs("b", "fit")
    records.write_curves(
        "b", "fit", [{"item_id": "b", "step": 0, "mse": 0.5}, {"item_id": "b", "step": 1, "mse": 0.25}]
    )
    records.write_stage_done("b", "fit", {"outputs": files})
    records.write_done("b", {"losses": {"mse": 0.5}, "attempt": records.start_counts()["b"]})
    assert files == ["items/b/fit/render.png", "items/b/fit/latents.pt", "items/b/fit/mask.png"]
    assert torch.equal(records.read_stage_outputs("b", "fit")["latents"], latent)
    assert (tmp_path / "items/b/fit/curves.csv").read_text() == "step,mse\n0,0.5\n1,0.25\n"
    assert records.done_ids() == {"b"} and records.is_done("b") and not records.is_done("a")
    assert (
        records.read_record("b")["attempt"] == 2
        and json.loads((tmp_path / "done/b.json").read_text())["host"]
    )
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []  # atomic writes leave no temp files behind
    with records.attempt_log.open("a") as handle:
        handle.write('{"event": "start", "items": ["a"')  # a line cut short by a kill
    assert records.start_counts() == {"a": 1, "b": 2}


def test_resume_checkpoint_is_the_furthest_readable_one_short_of_the_end(tmp_path):
    records = FitRecords(tmp_path)
    folder = records.chunk_dir(["a", "b"])
    folder.mkdir(parents=True)
    assert records.resume_checkpoint(["a", "b"], steps=10) is None
    torch.save({"global_step": 4, "state_dict": {"latents": torch.zeros(2, 3)}}, folder / "chunk.ckpt")
    torch.save({"global_step": 10}, folder / "hpc_ckpt_1.ckpt")  # finished: nothing left to resume
    torch.save({"global_step": 8}, folder / "hpc_ckpt_2.ckpt")
    whole = (folder / "hpc_ckpt_2.ckpt").read_bytes()
    (folder / "hpc_ckpt_2.ckpt").write_bytes(whole[: len(whole) // 2])  # cut short by a kill
    assert records.resume_checkpoint(["a", "b"], steps=10) == str(folder / "chunk.ckpt")
    assert records.resume_checkpoint(["a", "c"], steps=10) is None  # another chunk's composition
    records.finish_chunk(["a", "b"])
    assert not folder.exists()


def test_a_folder_manifest_reads_only_images(tmp_path):
    make_faces(tmp_path / "faces", 2)
    (tmp_path / "faces" / "notes.txt").write_text("not an image")
    np.save(tmp_path / "faces" / "array.npy", np.zeros(3))
    assert [item.item_id for item in read_manifest(tmp_path / "faces")] == ["face0", "face1"]


def test_progress_is_a_bar_on_a_terminal_and_log_lines_otherwise(caplog):
    overall = iter([4, 6, 9])
    with caplog.at_level(logging.INFO, logger="facelab"):
        with FitProgress("shard 1/3", 5, 1, 12, lambda: next(overall), mode="lines") as lines:
            lines.advance(2, 0.5)
    assert [r.getMessage() for r in caplog.records] == [
        "shard 1/3: 1/5 items done, 4 left (all shards 4/12) - starting",
        "shard 1/3: 3/5 items done, 2 left (all shards 6/12) - chunk of 2 in 0.5 s",
    ]
    with FitProgress("shard 0/1", 4, 0, 4, lambda: 2, mode="bar") as bar:
        bar.advance(2, 0.1)
        (task,) = bar.progress.tasks
        assert (task.completed, task.total, task.fields["overall"]) == (2, 4, "all shards 2/4")
    with pytest.raises(ValueError, match="progress='fancy'"):
        FitProgress("shard 0/1", 1, 0, 1, lambda: 0, mode="fancy")
