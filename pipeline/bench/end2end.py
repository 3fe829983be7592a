"""The end-to-end retriever benchmark's pieces (`jobs/benchmark_end2end.py` runs them).

Four fine-tuning runs on the same ledger data (`pipeline/demo/end2end_data.py`), steps and seed, each on its
own copy of one freshly built index location and its own retrieval group:

    question_only     today's training: question encoder and generator, the index as built
    end2end_stale     the context encoder trains too (doc scores re-encoded in the step); index never refreshed
    end2end_refresh   as end2end_stale, and the index is re-embedded every refresh.every_steps in the background
    end2end_blocking  as end2end_refresh, but training waits while each refresh runs (the way others refresh)

Each exported model is scored on the test split with its own group, serving the run's last index version.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pipeline.bench.report_files import write_report_files
from pipeline.config import RunConfig, apply_overrides
from pipeline.retrieval.factory import make_retriever
from pipeline.retrieval.group import stop_retrieval_group
from pipeline.train.evaluation import evaluate_model
from pipeline.train.finetune import run_finetune

RUNS = {
    "question_only": {"model.train_context_encoder": False, "refresh.every_steps": 0},
    "end2end_stale": {"model.train_context_encoder": True, "refresh.every_steps": 0},
    "end2end_refresh": {"model.train_context_encoder": True, "refresh.blocking": False},
    "end2end_blocking": {"model.train_context_encoder": True, "refresh.blocking": True},
}
LABELS = {"question_only": "question\nencoder only", "end2end_stale": "end-to-end,\nindex never refreshed",
          "end2end_refresh": "end-to-end,\nbackground refresh", "end2end_blocking": "end-to-end,\nblocking refresh"}


def run_config(base: RunConfig, name: str, out: Path) -> RunConfig:
    """The config of run `name`: its overrides, and its own index location, group and output folder."""
    return apply_overrides(base, {**RUNS[name], "index.directory": str(out / name / "index"),
                                  "retrieval.group": f"{base.retrieval.group}-{name}", "retrieval.keep_running": True,
                                  "train.output_dir": str(out / name / "finetune"), "train.resume": False,
                                  "refresh.location": ""})


def run_one(base: RunConfig, name: str, out: Path, test: list) -> dict:
    """Train run `name` on a copy of the base index location, score its model on `test`, stop its group."""
    cfg = run_config(base, name, out)
    shutil.rmtree(out / name, ignore_errors=True)
    shutil.copytree(base.index.directory, cfg.index.directory)  # refreshes add versions to the run's own copy
    try:
        started = time.perf_counter()
        result = run_finetune(cfg)
        wall_s = time.perf_counter() - started
        retriever = make_retriever("ray", cfg.index.directory, cfg.retrieval, 0)
        test_metrics, _ = evaluate_model(str(result.model_dir), test, retriever, cfg)
    finally:
        stop_retrieval_group(cfg.retrieval.group, cfg.retrieval.namespace)
    return summarize_run(result.history, result.refreshes, test_metrics, wall_s)


def summarize_run(history: list[dict], refreshes: list[dict], test_metrics: dict, wall_s: float) -> dict:
    """One run's row of the report. A restore inside a run (resumed_at_step > 0 in any epoch) means a worker
    failed mid-run, so it counts as a failed call on top of the retrieval calls that failed."""
    last = history[-1]
    restores = sum(1 for row in history if row.get("resumed_at_step", 0) > 0)
    return {
        "test_exact_match": test_metrics["exact_match"], "test_recall@1": test_metrics["recall@1"],
        "test_f1": test_metrics["f1"], "wall_s": round(wall_s, 1),
        "stall_s": round(last.get("refresh_stall_s", 0.0), 2),
        "final_wait_s": round(last.get("refresh_final_wait_s", 0.0), 2),
        "failed_calls": int(last.get("retrieval_failed_calls", 0)) + restores,
        "refreshes": int(last.get("refreshes", 0)), "refresh_skipped": int(last.get("refresh_skipped", 0)),
        "refresh_failed": int(last.get("refresh_failed", 0)), "served_version": last.get("served_version"),
        "steps": last.get("step"), "train_loss": last.get("train_loss"),
        "dev_exact_match": last.get("dev_exact_match"), "refresh_log": refreshes,
    }


def compare_runs(runs: dict[str, dict]) -> dict:
    """The issue's targets, each with the figures it compares and whether it is met."""
    refresh, blocking, question = runs["end2end_refresh"], runs["end2end_blocking"], runs["question_only"]
    recall_gain = refresh["test_recall@1"] - question["test_recall@1"]
    em_gain = refresh["test_exact_match"] - question["test_exact_match"]
    quality_gap = max(blocking["test_recall@1"] - refresh["test_recall@1"],
                      blocking["test_exact_match"] - refresh["test_exact_match"])
    stall_share = refresh["stall_s"] / blocking["stall_s"] if blocking["stall_s"] > 0 else float("nan")
    failed = sum(run["failed_calls"] for run in runs.values())
    return {
        "refresh_minus_question_only_recall@1": {"value": round(recall_gain, 3), "target": ">= 0.10",
                                                 "met": recall_gain >= 0.10},
        "refresh_minus_question_only_exact_match": {"value": round(em_gain, 3), "target": ">= 0.05",
                                                    "met": em_gain >= 0.05},
        "blocking_minus_refresh_quality": {"value": round(quality_gap, 3), "target": "<= 0.02",
                                           "met": quality_gap <= 0.02},
        "refresh_stall_over_blocking_stall": {"value": round(stall_share, 3), "target": "<= 0.05",
                                              "met": stall_share <= 0.05},
        "failed_calls": {"value": failed, "target": "== 0", "met": failed == 0},
    }


def machine_load() -> dict:
    """What else the machine was doing: 1-minute load average against the cores."""
    return {"cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    return write_report_files(report, out, "end2end_benchmark", plot)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in RUNS if name in report["runs"]]
    runs = [report["runs"][name] for name in names]
    x = range(len(names))
    fig, (quality, time_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.38
    for offset, key, color in ((-width / 2, "test_recall@1", "#37a"), (width / 2, "test_exact_match", "#2a7")):
        bars = quality.bar([i + offset for i in x], [run[key] for run in runs], width, label=key, color=color)
        quality.bar_label(bars, fmt="%.2f", fontsize=8)
    pretrained = report.get("pretrained_test_recall@1")
    if pretrained is not None:
        quality.axhline(pretrained, color="#999", linestyle="--", label="recall@1, pretrained encoders")
    quality.set(xticks=list(x), xticklabels=[LABELS[n] for n in names], ylim=(0, 1.15), title="Test split")
    quality.legend(fontsize=8, loc="upper left")
    for offset, key, color in ((-width / 2, "wall_s", "#777"), (width / 2, "stall_s", "#c44")):
        bars = time_axes.bar([i + offset for i in x], [run[key] for run in runs], width, label=key, color=color)
        time_axes.bar_label(bars, fmt="%.0f", fontsize=8)
    time_axes.set(xticks=list(x), xticklabels=[LABELS[n] for n in names], ylabel="seconds",
                  title="Training wall time, and seconds training waited for refreshes")
    time_axes.legend(fontsize=8)
    for axes in (quality, time_axes):
        axes.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
