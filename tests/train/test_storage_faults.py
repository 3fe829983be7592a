"""Run outputs, exported models, checkpoints, sweep results and generated data on a full, read-only or
damaged file system: one StorageError line naming the path, and the previous files whole (real tmpfs file
systems; skipped where mount is refused)."""

from __future__ import annotations

import json

import pytest
import ray.train
import torch

from pipeline.config import RunConfig
from pipeline.demo.generated import ensure_generated
from pipeline.errors import ModelLoadError, StorageError
from pipeline.train.checkpoints import (
    HISTORY_FILE,
    MODEL_DIR,
    STATE_FILE,
    export_model,
    restore_checkpoint,
    write_run_outputs,
)
from pipeline.tune.results import write_sweep_results
from tests.tmpfs import fill, mounted_tmpfs, remount_read_only

HISTORY = [{"epoch": 1, "step": 4, "dev_exact_match": 0.5}]


@pytest.fixture
def disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", size="1m") as directory:
        yield directory


def names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_run_outputs_on_a_full_disk_keep_the_previous_ones_whole(disk):
    out = disk / "run"
    write_run_outputs(out, HISTORY, [[1, 2.0], [4, 1.5]])
    before = {name: (out / name).read_bytes() for name in names(out)}
    fill(disk, leave_bytes=0)
    with pytest.raises(StorageError, match=r"run/metrics\.json: writing failed: no space left on device$"):
        write_run_outputs(out, HISTORY * 500, [[1, 2.0]])
    assert {name: (out / name).read_bytes() for name in names(out)} == before  # no half file, no temp sibling


def test_run_outputs_on_a_read_only_file_system_are_one_line(disk):
    remount_read_only(disk)
    with pytest.raises(StorageError, match=r"disk/run: creating failed: read-only file system$"):
        write_run_outputs(disk / "run", HISTORY, [])


def fake_checkpoint(directory, model_bytes: int = 300_000):
    """A checkpoint directory whose model/ holds one large file (what export_model copies)."""
    (directory / MODEL_DIR).mkdir(parents=True)
    (directory / MODEL_DIR / "model.safetensors").write_bytes(b"\1" * model_bytes)
    return ray.train.Checkpoint.from_directory(str(directory))


def test_an_export_onto_a_full_disk_keeps_the_previous_model(tmp_path, disk):
    (disk / "model").mkdir()
    (disk / "model" / "weights").write_text("the previous export")
    fill(disk, leave_bytes=100_000)
    with pytest.raises(StorageError, match=r"disk/model: writing failed: no space left on device$"):
        export_model(fake_checkpoint(tmp_path / "ckpt"), disk / "model")
    assert names(disk) == ["filler", "model"]  # no temporary copy left beside it
    assert (disk / "model" / "weights").read_text() == "the previous export"


def test_an_export_that_does_not_load_keeps_the_previous_model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights").write_text("the previous export")
    with pytest.raises(ModelLoadError, match=r"rag_parts\.json: missing"):
        export_model(fake_checkpoint(tmp_path / "ckpt", model_bytes=10), tmp_path / "model")
    assert names(tmp_path) == ["ckpt", "model"]
    assert (tmp_path / "model" / "weights").read_text() == "the previous export"


def damaged_checkpoint(directory, damage: str):
    directory.mkdir()
    torch.save({"optimizer": {}, "scheduler": {}, "state": {"epoch": 1}}, directory / STATE_FILE)
    (directory / HISTORY_FILE).write_text(json.dumps(HISTORY))
    target = directory / (STATE_FILE if damage == "state" else HISTORY_FILE)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # cut short, as a failed copy
    return ray.train.Checkpoint.from_directory(str(directory))


@pytest.mark.parametrize("damage, name", [("state", STATE_FILE), ("history", HISTORY_FILE)])
def test_a_damaged_checkpoint_file_is_one_line_naming_it(tmp_path, damage, name):
    with pytest.raises(StorageError, match=rf"{name}: damaged checkpoint file \(.*\); resume from an earlier"):
        restore_checkpoint(damaged_checkpoint(tmp_path / "ckpt", damage))


def test_sweep_results_on_a_full_disk_are_one_line_and_leave_no_half_file(disk):
    rows = [{"trial_id": "t1", "status": "TERMINATED", "overrides": {"train.lr": 0.1}, "history": HISTORY * 2000,
             "metrics": {"dev_exact_match": 0.5}, "checkpoint_path": None, "error": None}]
    (disk / "sweep").mkdir()
    fill(disk, leave_bytes=0)
    with pytest.raises(StorageError, match=r"sweep/results\.csv: writing failed: no space left on device$"):
        write_sweep_results(disk / "sweep", rows, rows[0], RunConfig(), "dev_exact_match")
    assert names(disk / "sweep") == []


def test_generated_data_on_a_full_disk_is_one_line_and_leaves_nothing(disk):
    def generate(paths):
        paths.documents.write_bytes(b"x" * 2_000_000)

    with pytest.raises(StorageError, match=r"disk/demo: generating failed: no space left on device$"):
        ensure_generated(disk / "demo", {"version": 1, "seed": 0}, generate)
    assert names(disk) == []
