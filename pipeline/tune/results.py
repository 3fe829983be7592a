"""What a sweep leaves behind: a results table (terminal, CSV, JSON), the tuned metric per epoch (PNG),
the best trial's config (YAML that `jobs/finetune.py --config` loads) and its model in Hugging Face format.

Rows are the plain dicts `pipeline.tune.sweep` makes from Tune's ResultGrid:
{"trial_id", "status", "overrides": {dotted key: value}, "metrics": last report, "checkpoint_path", "history", "error"}.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import ray.train
import yaml

from pipeline.config import RunConfig
from pipeline.storage import storage_errors, write_atomically, write_text_atomically
from pipeline.train.checkpoints import export_model

TABLE_METRICS = ("epoch", "train_loss", "dev_exact_match", "dev_f1", "dev_hit@k", "dev_recall@1")


def write_sweep_results(out: Path, rows: list[dict], best: dict, best_config: RunConfig, metric: str) -> dict:
    """Write every output file under `out`; returns {name: path}. Copies (and loads) the best model."""
    files = {"results_csv": out / "results.csv", "results_json": out / "results.json",
             "plot": out / f"{metric.replace('@', '_at_')}_per_epoch.png", "best_config": out / "best_config.yaml",
             "best_model": out / "best_model"}
    with storage_errors(out, "creating"):
        out.mkdir(parents=True, exist_ok=True)
    # Each file whole or not replaced (StorageError naming it on a full disk); the model through export_model.
    write_atomically(files["results_csv"], lambda tmp: write_csv(tmp, rows))
    write_text_atomically(files["results_json"], json.dumps(
        {"metric": metric, "best_trial": best["trial_id"], "trials": rows}, indent=2, default=_native))
    write_atomically(files["plot"], lambda tmp: plot_metric(tmp, rows, metric))
    write_text_atomically(
        files["best_config"],
        f"# Best trial {best['trial_id']} of the sweep in {out}: {metric} = {best['metrics'].get(metric)}\n"
        f"# Overrides: {best['overrides']}\n"
        f"# Re-run it: python jobs/finetune.py --config {files['best_config']}\n"
        + yaml.safe_dump(best_config.to_dict(), sort_keys=False))
    copy_best_model(best, files["best_model"])
    return files


def write_csv(path: Path, rows: list[dict]) -> None:
    """One line per trial: id, status, each override, every final metric, checkpoint path."""
    override_keys = sorted({key for row in rows for key in row["overrides"]})
    metric_keys = list(dict.fromkeys(key for row in rows for key in row["metrics"]))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", *override_keys, *metric_keys, "checkpoint_path"])
        for row in rows:
            writer.writerow([row["trial_id"], row["status"], *(row["overrides"].get(k, "") for k in override_keys),
                             *(row["metrics"].get(k, "") for k in metric_keys), row["checkpoint_path"] or ""])


def plot_metric(path: Path, rows: list[dict], metric: str) -> None:
    """`metric` against epoch, one line per trial (matplotlib's Agg canvas: no display, no pyplot state)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for row in rows:
        points = [(h["epoch"], h[metric]) for h in row["history"] if "epoch" in h and metric in h]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{row['trial_id']}  {describe_overrides(row['overrides'])}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, {len(rows)} trials")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def copy_best_model(best: dict, destination: Path) -> None:
    """Export the model of the best trial's last checkpoint to `destination` (checked to load alone)."""
    if not best["checkpoint_path"]:
        raise RuntimeError(f"best trial {best['trial_id']} reported no checkpoint")
    export_model(ray.train.Checkpoint(best["checkpoint_path"]), destination)


def describe_overrides(overrides: dict) -> str:
    return " ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in sorted(overrides.items()))


def format_trials(rows: list[dict], metric: str, best_id: str | None = None) -> str:
    """The results table for the terminal: one line per trial, the best marked with '*'."""
    keys = list(dict.fromkeys((metric, *TABLE_METRICS)))
    lines = [f"  {'trial':<14} {'status':<10} " + " ".join(f"{k:>15}" for k in keys) + "  overrides"]
    for row in rows:
        cells = [f"{row['metrics'][k]:>15.4g}" if isinstance(row["metrics"].get(k), float)
                 else f"{row['metrics'].get(k, ''):>15}" for k in keys]
        mark = "*" if row["trial_id"] == best_id else " "
        lines.append(f"{mark} {row['trial_id']:<14} {row['status']:<10} " + " ".join(cells)
                     + f"  {describe_overrides(row['overrides'])}")
    return "\n".join(lines)


def _native(value):
    """json.dumps fallback for numpy scalars left in Tune's dataframes."""
    return value.item() if hasattr(value, "item") else str(value)
