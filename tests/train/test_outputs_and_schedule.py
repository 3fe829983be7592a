"""The training run's outputs and schedule: the best checkpoint exported with the latest kept for resume, curves
written for every run, encoders frozen for their freeze steps (both encoders learning past them end to end:
tests/train/test_refresh.py)."""

from __future__ import annotations

import json

import pytest

from pipeline.config import RunConfig, apply_overrides
from pipeline.model.rag import load_rag_model
from pipeline.retrieval.group import stop_retrieval_group
from pipeline.train.finetune import run_finetune
from pipeline.train.optimizer import ParamGroupSchedule, lr_multiplier
from tests.conftest import TEST_NAMESPACE, assert_is_a_plot, largest_change, weights_of

GROUP = "training"


def _config(tiny_demo, tmp_path, **overrides) -> RunConfig:
    return apply_overrides(RunConfig(), {**tiny_demo, "train.output_dir": str(tmp_path / "run"),
                                         "retrieval.group": GROUP, "train.num_workers": 1, **overrides})


@pytest.fixture
def stop_group():
    yield
    stop_retrieval_group(GROUP, TEST_NAMESPACE)


def test_encoders_hold_still_during_their_freeze_steps_then_follow_the_schedule():
    frozen = ParamGroupSchedule(freeze=3, warmup=2, total=10, schedule="linear")
    assert [frozen(step) for step in range(3)] == [0.0, 0.0, 0.0]
    assert [frozen(step) for step in (3, 4)] == [lr_multiplier(0, 2, 7, "linear"), lr_multiplier(1, 2, 7, "linear")]
    assert frozen(3) > 0 and frozen(9) > frozen(10) == 0.0


def test_the_best_checkpoint_is_exported_and_the_latest_kept_for_resume(tiny_demo, tmp_path, stop_group):
    # "step" scored low-is-best makes epoch 1 the best, whatever the model learns: exported, yet not the latest.
    cfg = _config(tiny_demo, tmp_path, **{"train.epochs": 3, "train.best_metric": "step", "train.best_mode": "min",
                                          "train.log_every_steps": 4})
    result = run_finetune(cfg)
    assert result.best_epoch == 1 and [h["epoch"] for h in result.history] == [1, 2, 3]
    storage = tmp_path / "run" / "ray_train" / "finetune"
    kept = sorted(p for p in storage.glob("checkpoint_*") if p.is_dir())
    assert len(kept) == 2  # the best (epoch 1) and the latest (epoch 3); epoch 2's was deleted
    latest = load_rag_model(kept[-1] / "model")
    exported = load_rag_model(result.model_dir)
    best = load_rag_model(kept[0] / "model")
    assert largest_change(weights_of(exported.head), weights_of(best.head)) == 0.0
    assert largest_change(weights_of(exported.head), weights_of(latest.head)) > 0.0
    curves = json.loads((tmp_path / "run" / "curves.json").read_text())
    steps = result.history[-1]["step"]
    assert [point[0] for point in curves["train_loss"]] == list(range(4, steps + 1, 4))
    assert [point[0] for point in curves["dev_exact_match"]] == [h["step"] for h in result.history]
    assert_is_a_plot(tmp_path / "run" / "curves.png")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == result.history
