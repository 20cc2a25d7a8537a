"""Latent-fit jobs end to end on the toy fit: records, reruns, batch independence, resume, kills, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from callbacks.fit_outputs import ChunkCheckpoint
from facelab.fit.job import run_fit
from facelab.fit.records import FitRecords, chunk_key
from tests.conftest import compose_config
from tests.test_fit_items import make_faces

BIN = Path(sys.executable).parent
FIT_TINY = ["steps=20", "extras.print_config=false", "progress=lines"]


def fit_config(tmp_path: Path, manifest: Path, output_dir: Path, *overrides: str):
    return compose_config(
        "fit", tmp_path / "hydra", [f"manifest={manifest}", f"output_dir={output_dir}", *FIT_TINY, *overrides]
    )


def snapshot(root: Path) -> dict:
    """Every output and record file -> (mtime, bytes)."""
    return {
        str(path.relative_to(root)): (path.stat().st_mtime_ns, path.read_bytes())
        for folder in ("items", "done")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def event_counts(root: Path, kind: str) -> dict[str, int]:
    """How often each item appears in `kind` ("start" / "done") events of every process's attempt log."""
    counts: dict[str, int] = {}
    for event in FitRecords(root).events():
        for item_id in event["items"] if event["event"] == kind else ():
            counts[item_id] = counts.get(item_id, 0) + 1
    return counts


def latent(root: Path, item_id: str) -> torch.Tensor:
    return torch.load(root / "items" / item_id / "latents.pt")  # [latent_dim]


@pytest.fixture
def faces(tmp_path) -> Path:
    make_faces(tmp_path / "faces", 5)
    return tmp_path / "faces"


def test_toy_fit_records_every_item_and_its_outputs_match_its_record(tmp_path, faces):
    out = tmp_path / "out"
    cfg = fit_config(tmp_path, faces, out, "batch_size=2")
    assert run_fit(cfg) == {"rank": 0, "world": 1, "items": 5, "fitted": 5, "skipped": 0}
    module, items = instantiate(cfg.fit.module), instantiate(cfg.data)
    batch = items.chunk(items.items, steps=1).batch
    start = module.init_latents(batch)  # [5, latent_dim]
    start_mse = module.item_losses(module.render(start, batch), start, batch)["mse"]
    for index, item_id in enumerate(batch["meta"]["item_id"]):
        record = json.loads((out / "done" / f"{item_id}.json").read_text())
        assert record["steps"] == 20 and record["attempt"] == 1 and record["resumed_from"] is None
        assert record["outputs"] == [f"items/{item_id}/latents.pt", f"items/{item_id}/render.png"]
        assert record["losses"]["mse"] < 0.8 * float(
            start_mse[index]
        )  # the fit fits (20 steps, a 32-d latent)
        fitted = latent(out, item_id)[None]  # [1, latent_dim]
        one = {"image": batch["image"][index : index + 1]}
        mse = module.item_losses(module.render(fitted, one), fitted, one)["mse"]
        assert float(mse) == pytest.approx(record["losses"]["mse"], rel=1e-5)  # the record describes the file
    assert (
        event_counts(out, "start") == event_counts(out, "done") == dict.fromkeys(batch["meta"]["item_id"], 1)
    )
    assert list(out.glob("partial/*")) == []  # recorded chunks leave no checkpoints behind


def test_rerun_skips_done_items_and_leaves_their_files_untouched(tmp_path, faces):
    out = tmp_path / "out"
    cfg = fit_config(tmp_path, faces, out, "batch_size=2")
    run_fit(cfg)
    before = snapshot(out)
    first_latent = latent(out, "face3")
    assert run_fit(cfg)["skipped"] == 5
    assert snapshot(out) == before
    assert sum(event_counts(out, "start").values()) == 5  # the rerun started nothing
    (out / "done" / "face3.json").unlink()  # as if killed between face3's outputs and its record
    assert run_fit(cfg) == {"rank": 0, "world": 1, "items": 5, "fitted": 1, "skipped": 4}
    after = snapshot(out)
    changed = {name for name in after if after[name] != before[name]}
    assert changed <= {"items/face3/latents.pt", "items/face3/render.png", "done/face3.json"}
    assert "done/face3.json" in changed and json.loads((out / "done/face3.json").read_text())["attempt"] == 2
    # refitted alone, not beside face2 as the first time: the same latent
    torch.testing.assert_close(latent(out, "face3"), first_latent, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["torch.optim.Adam", "torch.optim.SGD"])
def test_an_items_result_does_not_depend_on_its_batch_companions(tmp_path, faces, optimizer):
    """Fails if the per-item losses were averaged: with SGD the step of a batch of 3 would shrink 3-fold."""
    overrides = [f"fit.module.optimizer._target_={optimizer}", "fit.module.optimizer.lr=0.5"]
    alone, together = tmp_path / "alone", tmp_path / "together"
    run_fit(fit_config(tmp_path, faces, alone, "batch_size=1", *overrides))
    run_fit(fit_config(tmp_path, faces, together, "batch_size=3", *overrides))
    for item_id in ("face0", "face1", "face2", "face3", "face4"):
        torch.testing.assert_close(latent(together, item_id), latent(alone, item_id), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(latent(alone, "face0"), latent(alone, "face1"), atol=1e-2)  # items do differ


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_each_latents_gradient_is_its_own_items_alone(tmp_path, faces):
    cfg = fit_config(tmp_path, faces, tmp_path / "out")
    module, items = instantiate(cfg.fit.module), instantiate(cfg.data)
    batch = items.chunk(items.items[:3], steps=1).batch

    def gradient(rows: slice) -> torch.Tensor:
        part = {"image": batch["image"][rows], "meta": {"item_id": batch["meta"]["item_id"][rows]}}
        module.latents = torch.nn.Parameter(module.init_latents(part))
        module.training_step(part, 0).backward()  # outside a Trainer: self.log only warns
        return module.latents.grad  # [b, latent_dim]

    together = gradient(slice(0, 3))
    for index in range(3):
        torch.testing.assert_close(
            together[index], gradient(slice(index, index + 1))[0], rtol=1e-5, atol=1e-7
        )


def test_fit_checkpoint_holds_latents_only_and_resuming_it_equals_an_uninterrupted_fit(tmp_path, faces):
    cfg = fit_config(tmp_path, faces, tmp_path / "out", "steps=10")
    items = instantiate(cfg.data)
    chunk = items.items[:3]
    records = FitRecords(tmp_path / "out")
    chunk_dir = records.chunk_dir([item.item_id for item in chunk])

    def fit(ckpt_path=None) -> torch.Tensor:
        module = instantiate(cfg.fit.module)
        trainer = instantiate(
            cfg.trainer,
            default_root_dir=str(chunk_dir),
            callbacks=[ChunkCheckpoint(every_n_steps=4)],
            _convert_="all",
        )
        trainer.fit(module, datamodule=items.chunk(chunk, 10), ckpt_path=ckpt_path)
        return module.latents.detach().clone()  # [3, latent_dim]

    uninterrupted = fit()
    checkpoint = torch.load(chunk_dir / "chunk.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8  # every 4 steps, never the last one
    assert list(checkpoint["state_dict"]) == ["latents"]  # the frozen generator is not in it
    assert checkpoint["state_dict"]["latents"].shape == (3, 32)
    assert len(checkpoint["optimizer_states"][0]["state"]) == 1  # Adam's moments of the latents
    assert records.resume_checkpoint([item.item_id for item in chunk], steps=10) == str(
        chunk_dir / "chunk.ckpt"
    )
    assert torch.equal(fit(ckpt_path=str(chunk_dir / "chunk.ckpt")), uninterrupted)


def test_two_shards_fit_disjoint_halves_into_one_output_dir(tmp_path, faces):
    out = tmp_path / "out"
    for rank in (1, 0):
        summary = run_fit(fit_config(tmp_path, faces, out, f"shard.rank={rank}", "shard.world=2"))
        assert summary["items"] == (3 if rank == 0 else 2) and summary["fitted"] == summary["items"]
    starts = [event for event in FitRecords(out).events() if event["event"] == "start"]
    by_rank = {rank: sorted(i for e in starts if e["rank"] == rank for i in e["items"]) for rank in (0, 1)}
    assert by_rank == {0: ["face0", "face2", "face4"], 1: ["face1", "face3"]}
    assert FitRecords(out).done_ids() == {f"face{index}" for index in range(5)}


def test_a_missing_or_bad_manifest_is_a_clear_error(tmp_path, faces):
    with pytest.raises(ValueError, match="facelab-fit needs manifest="):
        run_fit(compose_config("fit", tmp_path / "hydra", FIT_TINY))
    with pytest.raises(Exception, match=r"Manifest .*absent.csv does not exist"):
        run_fit(fit_config(tmp_path, tmp_path / "absent.csv", tmp_path / "out"))


class SignalOnceAfterAChunk(pl.Callback):
    """Sends this process Slurm's early-warning SIGUSR1 after the first chunk's fit, before the next one."""

    sent = False

    def on_fit_end(self, trainer, pl_module) -> None:
        if not SignalOnceAfterAChunk.sent:
            SignalOnceAfterAChunk.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)


def test_a_preemption_signal_between_chunks_stops_before_the_next_one(tmp_path, faces, caplog):
    target = f"+callbacks.signal._target_={__name__}.SignalOnceAfterAChunk"
    cfg = fit_config(tmp_path, faces, tmp_path / "out", "batch_size=2", target)
    assert run_fit(cfg) == {"rank": 0, "world": 1, "items": 5, "fitted": 2, "skipped": 0}  # alive, not killed
    assert "stopped by a signal (SIGUSR1 between chunks)" in caplog.text
    assert FitRecords(tmp_path / "out").done_ids() == {"face0", "face1"}
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the job's handler is gone with the job
    assert run_fit(cfg)["fitted"] == 3


def _facelab_fit(*overrides: str, cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [str(BIN / "facelab-fit"), *overrides],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **popen,
    )


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.slow
def test_killed_and_preempted_jobs_end_with_every_item_done_exactly_once(tmp_path):
    """Run 1 is SIGKILLed inside chunk 2; run 2 resumes chunk 2 and is preempted (SIGUSR1) inside chunk 3;
    run 3 resumes chunk 3 and finishes. Every item is recorded once and equals an uninterrupted job's."""
    make_faces(tmp_path / "faces", 6)
    job = [
        "manifest=faces",
        "batch_size=2",
        "steps=200",
        "checkpoint_every_n_steps=20",
        "extras.print_config=false",
    ]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    chunk_dirs = [killed / "partial" / chunk_key([f"face{2 * k}", f"face{2 * k + 1}"]) for k in range(3)]

    first = _facelab_fit(*job, f"output_dir={killed}", "hydra.run.dir=run1", cwd=tmp_path)
    _wait_for(chunk_dirs[1] / "chunk.ckpt", first)
    first.send_signal(signal.SIGKILL)
    output = first.communicate()[0]
    assert (chunk_dirs[1] / "chunk.ckpt").exists(), f"the second chunk never checkpointed:\n{output[-3000:]}"
    at_kill = snapshot(killed)
    assert {name for name in at_kill if name.startswith("done/")} == {"done/face0.json", "done/face1.json"}, (
        "the kill should land inside the second chunk's fit"
    )

    second = _facelab_fit(*job, f"output_dir={killed}", "hydra.run.dir=run2", cwd=tmp_path)
    _wait_for(chunk_dirs[2] / "chunk.ckpt", second)
    second.send_signal(signal.SIGUSR1)  # what Slurm sends before a time limit (sbatch --signal)
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0 and "stopped by a signal (Preempted: saved" in output, output[-3000:]
    assert "shard 0/1: 4/6 items done, 2 left (all shards 4/6)" in output  # log lines when not a terminal
    assert list(chunk_dirs[2].glob("hpc_ckpt_*.ckpt"))

    third = _facelab_fit(*job, f"output_dir={killed}", "hydra.run.dir=run3", cwd=tmp_path)
    output = third.communicate(timeout=600)[0]
    assert third.returncode == 0, output[-3000:]

    ids = [f"face{index}" for index in range(6)]
    after = snapshot(killed)
    assert {
        name: after[name] for name in at_kill
    } == at_kill  # what was recorded before the kill is untouched
    assert FitRecords(killed).done_ids() == set(ids)
    assert event_counts(killed, "done") == dict.fromkeys(ids, 1)  # each item recorded once
    assert event_counts(killed, "start") == {"face0": 1, "face1": 1, **dict.fromkeys(ids[2:], 2)}
    resumed = {
        "face2": "chunk.ckpt",
        "face3": "chunk.ckpt",
        "face4": "hpc_ckpt_1.ckpt",
        "face5": "hpc_ckpt_1.ckpt",
    }
    for item_id in ids:
        record = FitRecords(killed).read_record(item_id)
        assert record["attempt"] == (2 if item_id in resumed else 1) and record["steps"] == 200
        assert Path(record["resumed_from"] or "none").name == resumed.get(item_id, "none")
    assert list(killed.glob("partial/*")) == []

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same arithmetic, bit for bit
    try:
        run_fit(fit_config(tmp_path, tmp_path / "faces", reference, *job[1:]))
    finally:
        torch.set_num_threads(threads)
    for item_id in ids:  # resuming from either checkpoint changed nothing
        assert torch.equal(latent(killed, item_id), latent(reference, item_id)), item_id


def test_facelab_fit_console_script_is_a_hydra_app(tmp_path):
    result = subprocess.run(
        [str(BIN / "facelab-fit"), "--cfg", "job", "manifest=m.csv", "shard.world=4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "manifest: m.csv" in result.stdout and "world: 4" in result.stdout and "name: toy" in result.stdout
