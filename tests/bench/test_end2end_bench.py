"""The end-to-end benchmark's pieces (pipeline/bench/end2end.py, jobs/benchmark_end2end.py), without training:
the runs' configs, the report row of a run, the comparison with the issue's targets, the files written."""

import json
from pathlib import Path

import pytest

from pipeline.bench.end2end import (
    RUNS,
    compare_runs,
    run_config,
    summarize_run,
    write_report,
)
from pipeline.config import parse_config
from pipeline.errors import run_job
from pipeline.train.checks import check_run_config
from tests.conftest import assert_is_a_plot

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def benchmark_config():
    config, _ = parse_config(["--config", str(REPO / "configs" / "end2end_benchmark.yaml")], "x")
    return config


def test_every_run_has_its_own_index_group_and_output_and_a_valid_config(benchmark_config, tmp_path):
    configs = {name: run_config(benchmark_config, name, tmp_path) for name in RUNS}
    for key in ("index.directory", "retrieval.group", "train.output_dir"):
        section, field = key.split(".")
        values = {getattr(getattr(c, section), field) for c in configs.values()}
        assert len(values) == len(RUNS), key
    for config in configs.values():
        check_run_config(config)
    assert not configs["question_only"].model.train_context_encoder
    assert configs["question_only"].refresh.every_steps == 0
    assert configs["end2end_stale"].model.train_context_encoder and configs["end2end_stale"].refresh.every_steps == 0
    refreshing = (configs["end2end_refresh"], configs["end2end_blocking"])
    assert [c.refresh.blocking for c in refreshing] == [False, True]
    assert {c.refresh.every_steps for c in refreshing} == {benchmark_config.refresh.every_steps} != {0}
    # Everything else is the same run: same steps, seed, data, learning rates.
    strip = {"index", "retrieval", "refresh", "model", "train"}
    base = {k: v for k, v in configs["question_only"].to_dict().items() if k not in strip}
    assert all({k: v for k, v in c.to_dict().items() if k not in strip} == base for c in configs.values())
    assert len({(c.train.max_steps, c.train.seed, c.train.lr, c.train.encoder_lr) for c in configs.values()}) == 1


def _history(**last) -> list[dict]:
    return [{"epoch": 1, "step": 10, "resumed_at_step": 0}, {"epoch": 2, "step": 20, **last}]


def test_a_run_row_counts_failed_calls_and_restores():
    refreshes = [{"version": "v0002", "embed_s": 3.0}]
    row = summarize_run(_history(retrieval_failed_calls=2, resumed_at_step=10, refresh_stall_s=1.23456, refreshes=1,
                                 served_version="v0002"), refreshes,
                        {"exact_match": 0.5, "recall@1": 0.25, "f1": 0.6}, wall_s=12.345)
    assert row["failed_calls"] == 3  # two failed retrieval calls, one restore
    assert (row["test_exact_match"], row["test_recall@1"], row["wall_s"], row["stall_s"]) == (0.5, 0.25, 12.3, 1.23)
    assert (row["refreshes"], row["served_version"], row["refresh_log"]) == (1, "v0002", refreshes)
    clean = summarize_run(_history(), [], {"exact_match": 1.0, "recall@1": 1.0, "f1": 1.0}, wall_s=1)
    assert (clean["failed_calls"], clean["stall_s"], clean["refreshes"]) == (0, 0.0, 0)


def _row(recall: float, em: float, stall: float, failed: int = 0) -> dict:
    return {"test_recall@1": recall, "test_exact_match": em, "stall_s": stall, "failed_calls": failed}


def test_the_targets_compare_the_right_runs():
    runs = {"question_only": _row(0.5, 0.55, 0), "end2end_stale": _row(0.5, 0.5, 0),
            "end2end_refresh": _row(0.9, 0.85, 2.0), "end2end_blocking": _row(0.91, 0.86, 100.0)}
    targets = compare_runs(runs)
    assert targets["refresh_minus_question_only_recall@1"] == {"value": 0.4, "target": ">= 0.10", "met": True}
    assert targets["refresh_minus_question_only_exact_match"]["value"] == 0.3
    assert targets["blocking_minus_refresh_quality"] == {"value": 0.01, "target": "<= 0.02", "met": True}
    assert targets["refresh_stall_over_blocking_stall"]["value"] == 0.02
    assert all(t["met"] for t in targets.values())
    runs["end2end_refresh"] = _row(0.55, 0.56, 10.0, failed=1)
    missed = compare_runs(runs)
    assert not any(missed[k]["met"] for k in ("refresh_minus_question_only_recall@1", "blocking_minus_refresh_quality",
                                              "refresh_stall_over_blocking_stall", "failed_calls"))


def test_the_report_is_written_as_json_and_png(tmp_path):
    row = {**_row(0.5, 0.5, 1.0), "wall_s": 10.0}
    report = {"runs": {name: row for name in RUNS}, "pretrained_test_recall@1": 0.3}
    json_path, png_path = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["runs"]["end2end_refresh"]["test_recall@1"] == 0.5
    assert_is_a_plot(png_path)


def test_an_unknown_run_name_is_a_one_line_error(capsys):
    from jobs import benchmark_end2end

    with pytest.raises(SystemExit) as exit_info:
        run_job(lambda: benchmark_end2end.main(["--runs", "question_only,end2end_fast"]))
    assert exit_info.value.code == 2
    assert "--runs: end2end_fast not among question_only" in capsys.readouterr().err
