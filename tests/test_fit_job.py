"""Latent-fit jobs end to end on the toy fit: records, reruns, batch independence, resume, kills, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from callbacks.chunk_checkpoint import ChunkCheckpoint
from datamodules.fit_items import FitItems
from facelab.fit.job import run_fit
from facelab.fit.manifest import Columns
from facelab.fit.records import FitRecords, chunk_key
from lightning_modules.latent_fit import Latent, LatentFit
from tests.conftest import compose_config
from tests.test_fit_items import make_faces

BIN = Path(sys.executable).parent
FIT_TINY = [
    "fit.module.stages.coarse.steps=20",
    "fit.module.stages.refine.steps=5",
    "extras.print_config=false",
    "progress=lines",
]


def fit_config(tmp_path: Path, manifest: Path, output_dir: Path, *overrides: str):
    return compose_config(
        "fit", tmp_path / "hydra", [f"manifest={manifest}", f"output_dir={output_dir}", *FIT_TINY, *overrides]
    )


def snapshot(root: Path) -> dict:
    """Every output and record file -> (mtime, bytes)."""
    return {
        str(path.relative_to(root)): (path.stat().st_mtime_ns, path.read_bytes())
        for folder in ("items", "done", "stages")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def event_counts(root: Path, kind: str, stage: str | None = None) -> dict[str, int]:
    """How often each item appears in `kind` ("start" / "done") events of every process's attempt log."""
    counts: dict[str, int] = {}
    for event in FitRecords(root).events():
        if event["event"] != kind or (stage is not None and event.get("stage") != stage):
            continue
        for item_id in event["items"]:
            counts[item_id] = counts.get(item_id, 0) + 1
    return counts


def latent(root: Path, item_id: str, stage: str = "coarse", name: str = "latent") -> torch.Tensor:
    return torch.load(root / "items" / item_id / stage / f"{name}.pt")  # [latent_dim]


@pytest.fixture
def faces(tmp_path) -> Path:
    make_faces(tmp_path / "faces", 5)
    return tmp_path / "faces"


def start_mse(cfg, items) -> torch.Tensor:
    module = instantiate(cfg.fit.module)
    batch = items.batch(items.items)
    module.begin_stage("coarse", batch)
    return module.stage_losses()[2]["mse"]  # [5] at the seeded start


def test_toy_fit_records_every_stage_of_every_item_and_its_outputs_match_its_record(tmp_path, faces):
    out = tmp_path / "out"
    cfg = fit_config(tmp_path, faces, out, "batch_size=2")
    assert run_fit(cfg) == {"rank": 0, "world": 1, "items": 5, "fitted": 5, "skipped": 0}
    module, items = instantiate(cfg.fit.module), instantiate(cfg.data)
    before = start_mse(cfg, items)
    batch = items.batch(items.items)
    for index, item_id in enumerate(batch["meta"]["item_id"]):
        record = json.loads((out / "done" / f"{item_id}.json").read_text())
        assert record["steps"] == {"coarse": 20, "refine": 5} and record["attempt"] == 1
        assert record["outputs"] == [
            f"items/{item_id}/coarse/latent.pt",
            f"items/{item_id}/coarse/render.png",
            f"items/{item_id}/refine/latent.pt",
            f"items/{item_id}/refine/residual.pt",
            f"items/{item_id}/refine/render.png",
            f"items/{item_id}/refine/mse_gain.pt",
        ]
        coarse = record["losses"]["coarse"]
        assert coarse["mse"] < 0.8 * float(before[index])  # the fit fits (20 steps, a 32-d latent)
        assert record["losses"]["refine"]["mse"] < coarse["mse"]  # the second stage lowers its own loss
        one = {"image": batch["image"][index : index + 1], "meta": {"item_id": [item_id]}}
        module.begin_stage("coarse", one)
        module.latent_latent.data.copy_(latent(out, item_id)[None])
        mse = module.stage_losses()[2]["mse"]
        assert float(mse) == pytest.approx(coarse["mse"], rel=1e-5)  # the record describes the file
        residual = latent(out, item_id, "refine", "residual")
        assert residual.abs().max() <= 0.25 + 1e-7  # the projection held
        gain = float(latent(out, item_id, "refine", "mse_gain"))
        assert gain == pytest.approx(coarse["mse"] - record["losses"]["refine"]["mse"], rel=1e-4, abs=1e-7)
        curves = (out / "items" / item_id / "coarse" / "curves.csv").read_text().splitlines()
        assert curves[0] == "step,mse,latent_l2,total" and len(curves) == 1 + 20
        assert [int(line.split(",")[0]) for line in curves[1:]] == list(range(20))
        assert float(curves[1].split(",")[1]) == pytest.approx(float(before[index]), rel=1e-5)
    ids = dict.fromkeys(batch["meta"]["item_id"], 1)
    assert event_counts(out, "start", "coarse") == event_counts(out, "start", "refine") == ids
    assert event_counts(out, "done") == ids
    assert list(out.glob("partial/*")) == []  # recorded chunks leave no checkpoints behind


def test_rerun_skips_done_items_and_resumes_each_at_its_first_unrecorded_stage(tmp_path, faces):
    out = tmp_path / "out"
    cfg = fit_config(tmp_path, faces, out, "batch_size=2")
    run_fit(cfg)
    before = snapshot(out)
    first_refined = latent(out, "face3", "refine", "residual")
    assert run_fit(cfg)["skipped"] == 5
    assert snapshot(out) == before
    assert sum(event_counts(out, "start").values()) == 10  # the rerun started nothing
    (out / "done" / "face3.json").unlink()  # as if killed in face3's refine stage, after coarse's record
    (out / "stages" / "face3" / "refine.json").unlink()
    assert run_fit(cfg) == {"rank": 0, "world": 1, "items": 5, "fitted": 1, "skipped": 4}
    after = snapshot(out)
    changed = {name for name in after if after[name] != before[name]}
    assert changed <= {
        f"items/face3/refine/{n}"
        for n in ("latent.pt", "residual.pt", "render.png", "mse_gain.pt", "curves.csv")
    } | {"done/face3.json", "stages/face3/refine.json"}
    assert "done/face3.json" in changed and "stages/face3/refine.json" in changed
    assert event_counts(out, "start", "coarse")["face3"] == 1  # coarse was not redone
    assert json.loads((out / "done/face3.json").read_text())["attempt"] == 2
    # refined alone, not beside face2 as the first time: the same result
    torch.testing.assert_close(
        latent(out, "face3", "refine", "residual"), first_refined, rtol=1e-5, atol=1e-6
    )


def test_only_stage_reruns_one_stage_from_the_recorded_earlier_ones(tmp_path, faces):
    out = tmp_path / "out"
    run_fit(fit_config(tmp_path, faces, out))
    before = snapshot(out)
    run_fit(fit_config(tmp_path, faces, out, "only_stage=refine", "fit.module.stages.refine.steps=9"))
    after = snapshot(out)
    assert {n for n in after if after[n] != before[n] and n.startswith("items/")} == {
        f"items/face{i}/refine/{n}"
        for i in range(5)
        for n in ("latent.pt", "residual.pt", "render.png", "mse_gain.pt", "curves.csv")
    }
    assert json.loads((out / "stages/face0/refine.json").read_text())["steps"] == 9
    assert json.loads((out / "done/face0.json").read_text())["steps"]["refine"] == 5  # the job's record stays
    with pytest.raises(ValueError, match="only_stage='polish'.*coarse.*refine"):
        run_fit(fit_config(tmp_path, faces, tmp_path / "other", "only_stage=polish"))


@pytest.mark.parametrize("optimizer", ["torch.optim.Adam", "torch.optim.SGD"])
def test_an_items_result_does_not_depend_on_its_batch_companions(tmp_path, faces, optimizer):
    """Fails if the per-item losses were averaged: with SGD the step of a batch of 3 would shrink 3-fold."""
    overrides = [
        f"fit.module.stages.coarse.optimizer._target_={optimizer}",
        "fit.module.stages.coarse.optimizer.lr=0.5",
    ]
    alone, together = tmp_path / "alone", tmp_path / "together"
    run_fit(fit_config(tmp_path, faces, alone, "batch_size=1", *overrides))
    run_fit(fit_config(tmp_path, faces, together, "batch_size=3", *overrides))
    for item_id in ("face0", "face1", "face2", "face3", "face4"):
        torch.testing.assert_close(latent(together, item_id), latent(alone, item_id), rtol=1e-5, atol=1e-6)
        # Adam divides by sqrt(v): where a pixel's gradient is ~0, float-rounding differences of the
        # generator's batched matmul (1e-7) can move that pixel by up to lr * 1e-3; elsewhere they are equal.
        torch.testing.assert_close(
            latent(together, item_id, "refine", "residual"),
            latent(alone, item_id, "refine", "residual"),
            rtol=1e-5,
            atol=1e-4,
        )
    assert not torch.allclose(latent(alone, "face0"), latent(alone, "face1"), atol=1e-2)  # items do differ


def test_an_item_that_stops_early_stops_changing_while_the_others_go_on(tmp_path, faces):
    """With a stopping threshold between the items' final losses, some stop early: each item's record and
    latent equal those of the item fitted alone, and stopped items record fewer steps."""
    free = tmp_path / "free"
    run_fit(fit_config(tmp_path, faces, free, "fit.module.stages.coarse.steps=40"))
    finals = sorted(FitRecords(free).read_record(f"face{i}")["losses"]["coarse"]["mse"] for i in range(5))
    threshold = (finals[1] + finals[2]) / 2  # two items get under it, three never do
    stopping = [f"fit.module.stop_mse={threshold}", "fit.module.stages.coarse.steps=40"]
    alone, together = tmp_path / "alone", tmp_path / "together"
    run_fit(fit_config(tmp_path, faces, alone, "batch_size=1", *stopping))
    run_fit(fit_config(tmp_path, faces, together, "batch_size=5", *stopping))
    steps = {}
    for index in range(5):
        item_id = f"face{index}"
        record = FitRecords(together).read_record(item_id)
        assert record["steps"] == FitRecords(alone).read_record(item_id)["steps"]
        torch.testing.assert_close(latent(together, item_id), latent(alone, item_id), rtol=1e-5, atol=1e-6)
        steps[item_id] = record["steps"]["coarse"]
    assert sorted(steps.values())[:2] < [40, 40] and sorted(steps.values())[2:] == [40, 40, 40]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_each_latents_gradient_is_its_own_items_alone(tmp_path, faces):
    cfg = fit_config(tmp_path, faces, tmp_path / "out")
    module, items = instantiate(cfg.fit.module), instantiate(cfg.data)
    batch = items.batch(items.items[:3])

    def gradient(rows: slice) -> torch.Tensor:
        part = {"image": batch["image"][rows], "meta": {"item_id": batch["meta"]["item_id"][rows]}}
        module.begin_stage("coarse", part)
        module.stage_losses()[2]["total"].sum().backward()
        return module.latent_latent.grad  # [b, latent_dim]

    together = gradient(slice(0, 3))
    for index in range(3):
        torch.testing.assert_close(
            together[index], gradient(slice(index, index + 1))[0], rtol=1e-5, atol=1e-7
        )


def test_trainable_rows_leave_the_fixed_rows_untouched_and_out_of_the_optimiser():
    class RowFit(LatentFit):
        def init_latents(self, stage, batch):
            return {"w": Latent(torch.arange(24.0).view(2, 4, 3), trainable=slice(0, 2))}

        def item_losses(self, stage, latents, batch):
            return {"sq": latents["w"].pow(2).sum((1, 2))}

    module = RowFit({"one": {"steps": 1, "optimizer": partial(torch.optim.SGD, lr=0.1)}})
    module.begin_stage("one", {"meta": {"item_id": ["a", "b"]}})
    assert [p.shape for p in module.trainable_parameters()] == [(2, 2, 3)]
    module.stage_losses()[2]["total"].sum().backward()
    with torch.no_grad():
        module.latent_w -= 0.1 * module.latent_w.grad
    full = module.latents()["w"]
    expected = torch.arange(24.0).view(2, 4, 3)
    assert torch.equal(full[:, 2:], expected[:, 2:])  # the fixed rows
    torch.testing.assert_close(full[:, :2], expected[:, :2] * 0.8)  # d(x^2)/dx = 2x, lr 0.1


def test_optimisers_that_couple_items_are_refused(tmp_path, faces):
    lbfgs = [
        "fit.module.stages.coarse.optimizer._target_=torch.optim.LBFGS",
        "~fit.module.stages.coarse.optimizer.lr",
    ]
    with pytest.raises(ValueError, match="L-BFGS mixes every item"):
        run_fit(fit_config(tmp_path, faces, tmp_path / "a", *lbfgs))
    with pytest.raises(ValueError, match="gradient_clip_val is set"):
        run_fit(fit_config(tmp_path, faces, tmp_path / "b", "+trainer.gradient_clip_val=1.0"))


def test_chunk_checkpoint_holds_latents_and_item_state_and_resuming_it_equals_an_uninterrupted_fit(
    tmp_path, faces
):
    cfg = fit_config(tmp_path, faces, tmp_path / "out", "fit.module.stages.refine.steps=10")
    items = instantiate(cfg.data)
    chunk = items.items[:3]
    ids = [item.item_id for item in chunk]
    records = FitRecords(tmp_path / "out")
    module = instantiate(cfg.fit.module)
    batch = items.batch(chunk)
    module.begin_stage("coarse", batch)
    batch["previous"] = {"coarse": {"latent": module.latents()["latent"].detach()}}
    chunk_dir = records.chunk_dir(ids, "refine")

    def fit(ckpt_path=None) -> tuple[torch.Tensor, list]:
        module = instantiate(cfg.fit.module)
        trainer = instantiate(
            cfg.trainer,
            max_steps=10,
            default_root_dir=str(chunk_dir),
            callbacks=[ChunkCheckpoint(every_n_steps=4)],
            _convert_="all",
        )
        module.begin_stage("refine", batch)
        trainer.fit(module, train_dataloaders=DataLoader(range(10), batch_size=None), ckpt_path=ckpt_path)
        return module.latents()["residual"].detach().clone(), module.curve_rows  # [3, 3, S, S]

    uninterrupted, curves = fit()
    checkpoint = torch.load(chunk_dir / "chunk.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8  # every 4 steps, never the last one
    assert sorted(checkpoint["state_dict"]) == [  # no frozen generator in it
        "fixed_latent",
        "fixed_residual",
        "latent_residual",
        "state_start_mse",
        "state_steps_taken",
        "state_stopped",
    ]
    assert checkpoint["state_dict"]["latent_residual"].shape == (3, 3, 16, 16)
    assert checkpoint["fit_stage"] == "refine" and len(checkpoint["fit_curves"]) == 3 * 8
    assert len(checkpoint["optimizer_states"][0]["state"]) == 1  # Adam's moments of the residual
    assert records.resume_checkpoint(ids, steps=10, stage="refine") == str(chunk_dir / "chunk.ckpt")
    assert records.resume_checkpoint(ids, steps=10, stage="coarse") is None  # the key includes the stage
    resumed, resumed_curves = fit(ckpt_path=str(chunk_dir / "chunk.ckpt"))
    assert torch.equal(resumed, uninterrupted) and resumed_curves == curves


def test_pt_columns_load_latents_saved_by_another_job(tmp_path, faces):
    torch.save(torch.ones(4, 2), tmp_path / "w.pt")
    (tmp_path / "m.yaml").write_text(f"- {{image: {faces}/face0.png, start: {tmp_path}/w.pt}}\n")
    columns = Columns(required=("image",), optional=("start",), paths=("image", "start"))
    items = FitItems(
        str(tmp_path / "m.yaml"),
        columns={"required": ["image"], "optional": ["start"], "paths": ["image", "start"]},
        image_size=16,
    )
    assert columns.allowed == ("item_id", "image", "start")
    batch = items.batch(items.items)
    assert torch.equal(batch["start"], torch.ones(1, 4, 2)) and batch["image"].shape == (1, 3, 16, 16)
    (tmp_path / "bad.pt").write_bytes(b"not a tensor file")
    (tmp_path / "m.yaml").write_text(f"- {{image: {faces}/face0.png, start: {tmp_path}/bad.pt}}\n")
    items = FitItems(
        str(tmp_path / "m.yaml"),
        columns={"required": ["image"], "optional": ["start"], "paths": ["image", "start"]},
        image_size=16,
    )
    with pytest.raises(ValueError, match=r"m.yaml entry 0: start: .*bad.pt is not a readable tensor file"):
        items.batch(items.items)


def test_two_shards_fit_disjoint_halves_into_one_output_dir(tmp_path, faces):
    out = tmp_path / "out"
    for rank in (1, 0):
        summary = run_fit(fit_config(tmp_path, faces, out, f"shard.rank={rank}", "shard.world=2"))
        assert summary["items"] == (3 if rank == 0 else 2) and summary["fitted"] == summary["items"]
    starts = [event for event in FitRecords(out).events() if event["event"] == "start"]
    by_rank = {
        rank: sorted(i for e in starts if e["rank"] == rank and e["stage"] == "coarse" for i in e["items"])
        for rank in (0, 1)
    }
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
        "fit.module.stages.coarse.steps=200",
        "fit.module.stages.refine.steps=2",
        "checkpoint_every_n_steps=20",
        "extras.print_config=false",
    ]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    chunk_dirs = [
        killed / "partial" / chunk_key([f"face{2 * k}", f"face{2 * k + 1}"], "coarse") for k in range(3)
    ]

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
    assert event_counts(killed, "start", "coarse") == {"face0": 1, "face1": 1, **dict.fromkeys(ids[2:], 2)}
    resumed = {
        "face2": "chunk.ckpt",
        "face3": "chunk.ckpt",
        "face4": "hpc_ckpt_1.ckpt",
        "face5": "hpc_ckpt_1.ckpt",
    }
    for item_id in ids:
        record = FitRecords(killed).read_record(item_id)
        assert record["attempt"] == (2 if item_id in resumed else 1) and record["steps"]["coarse"] == 200
        stage_record = json.loads((killed / "stages" / item_id / "coarse.json").read_text())
        assert Path(stage_record["resumed_from"] or "none").name == resumed.get(item_id, "none")
    assert list(killed.glob("partial/*")) == []

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same arithmetic, bit for bit
    try:
        run_fit(fit_config(tmp_path, tmp_path / "faces", reference, *job[1:]))
    finally:
        torch.set_num_threads(threads)
    for item_id in ids:  # resuming from either checkpoint changed nothing
        assert torch.equal(latent(killed, item_id), latent(reference, item_id)), item_id
        assert torch.equal(
            latent(killed, item_id, "refine", "residual"), latent(reference, item_id, "refine", "residual")
        ), item_id


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


def test_loss_terms_reach_the_configured_logger(tmp_path, faces):
    logger = (
        f"trainer.logger={{_target_:pytorch_lightning.loggers.CSVLogger,save_dir:{tmp_path}/logs,name:fit}}"
    )
    run_fit(
        fit_config(tmp_path, faces, tmp_path / "out", "batch_size=5", logger, "trainer.log_every_n_steps=1")
    )
    rows = [
        line.split(",") for line in next((tmp_path / "logs").rglob("metrics.csv")).read_text().splitlines()
    ]
    header, values = rows[0], rows[1:]
    assert {"fit/coarse/mse", "fit/coarse/latent_l2", "fit/coarse/total"} <= set(header)
    column = header.index("fit/coarse/mse")
    logged = [float(row[column]) for row in values if row[column]]
    assert len(logged) == 20 and logged[-1] < logged[0]
