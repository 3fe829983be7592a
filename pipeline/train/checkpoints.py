"""The one owner of a fine-tuning run's files: checkpoints (save, restore), the history, the exported model.

    <train.output_dir>/
      model/                  the exported model, Hugging Face format: the best checkpoint by train.best_metric
      metrics.json            per-epoch metrics (what every epoch reported)
      curves.json, curves.png training loss by step and dev metrics by epoch
      ray_train/finetune/     Ray Train's run: checkpoint_* (the latest, which resume needs, and the best)
    checkpoint_*/
      model/                  `save_rag_model` output (with LoRA: the adapters and encoders, not the base generator)
      training_state.pt       optimizer, scheduler and TrainState (tensors and plain numbers only)
      history.json            per-epoch metrics up to this checkpoint

The training loop, the driver (`pipeline.train.finetune`) and Tune (`pipeline.tune`) all go through here.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
import torch

from pipeline.errors import StorageError
from pipeline.model.rag import load_rag_model, save_rag_model
from pipeline.storage import (
    replace_directory,
    storage_errors,
    write_atomically,
    write_text_atomically,
)

MODEL_DIR = "model"
STATE_FILE = "training_state.pt"
HISTORY_FILE = "history.json"
RUN_NAME = "finetune"
CURVE_METRICS = ("dev_exact_match", "dev_f1", "dev_recall@1")


@dataclass
class TrainState:
    """Where a run stands, saved in every checkpoint so a restore continues exactly there."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    loss_curve: list = field(default_factory=list)  # [step, mean training loss since the previous point]
    refresh: dict = field(default_factory=dict)  # the index refresh's counters (pipeline/train/refresh_schedule.py)


@dataclass
class Restored:
    """What `restore_checkpoint` gives back to a training worker."""

    parts: object  # RagParts
    optimizer: dict
    scheduler: dict
    state: TrainState
    history: list[dict]


def save_checkpoint(directory: Path, parts, optimizer, scheduler, state: TrainState, history: list[dict]) -> None:
    """Write a checkpoint directory (see the module docstring) that `restore_checkpoint` reads, and record its size
    (model and training state) in the last history row as `checkpoint_mb`; StorageError
    naming the directory for a full disk or a file system that refuses the write. (Ray Train then copies the
    directory to the run's storage as a whole, so a half-written one is never registered.)"""
    with storage_errors(directory):
        save_rag_model(parts, directory / MODEL_DIR, trainable_only=True)  # LoRA: adapters, not the base
        # Tensors and plain values only, so loading can use weights_only=True (nothing unpickled runs code).
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "state": dataclasses.asdict(state)}, directory / STATE_FILE)
        if history:  # the epoch being checkpointed reports what its checkpoint weighs
            written = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
            history[-1]["checkpoint_mb"] = round(written / 1e6, 2)
        (directory / HISTORY_FILE).write_text(json.dumps(history))


def restore_checkpoint(checkpoint) -> Restored:
    """The model, optimizer/scheduler state dicts, TrainState and history of a Ray Train checkpoint.
    StorageError naming the file for a damaged or unreadable training state or history (read before the model,
    which is the slow part)."""
    with checkpoint.as_directory() as ckpt:
        saved = _read_checkpoint_file(Path(ckpt) / STATE_FILE,
                                      lambda p: torch.load(p, weights_only=True, map_location="cpu"))
        history = _read_checkpoint_file(Path(ckpt) / HISTORY_FILE, lambda p: json.loads(p.read_text()))
        parts = load_rag_model(Path(ckpt) / MODEL_DIR)
    return Restored(parts, saved["optimizer"], saved["scheduler"], TrainState(**saved["state"]), history)


def _read_checkpoint_file(path: Path, read):
    """`read(path)`, or StorageError naming `path` when it is missing, unreadable or damaged."""
    if not path.is_file():
        raise StorageError(f"{path}: missing from the checkpoint; resume from an earlier checkpoint or start over")
    try:
        with storage_errors(path, "reading"):
            return read(path)
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:  # torch's, json's "damaged"
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise StorageError(f"{path}: damaged checkpoint file ({reason}); resume from an earlier checkpoint or "
                           f"start over") from None


def read_history(checkpoint_path: str) -> list[dict]:
    """The per-epoch metrics saved in a checkpoint, read alone (works on remote storage); [] if unreadable."""
    checkpoint = ray.train.Checkpoint(checkpoint_path)
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{HISTORY_FILE}") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return []


def export_model(checkpoint, destination: Path) -> Path:
    """Copy the model of a Ray Train checkpoint to `destination` (replacing it) and check that it loads alone.

    The copy is made and loaded beside `destination` and renamed into place only then: a full disk or an
    interrupted export leaves the previous model whole (StorageError naming the path), never half a model."""
    def copy_and_load(tmp: Path) -> None:
        shutil.copytree(Path(ckpt) / MODEL_DIR, tmp, dirs_exist_ok=True)
        parts = load_rag_model(tmp)  # the exported model must load on its own before we say it exists
        if parts.lora is not None:  # a checkpoint of adapters: the export merges them into the generator
            save_rag_model(parts, tmp)
            load_rag_model(tmp)

    with checkpoint.as_directory() as ckpt:
        return replace_directory(destination, copy_and_load)


def best_checkpoint(result, metric: str, mode: str):
    """(checkpoint, its metrics) of a Ray Train Result scoring best on `metric`; the latest if none reports it."""
    scored = [(c, m) for c, m in result.best_checkpoints if isinstance(m.get(metric), (int, float))
              and m[metric] == m[metric]]  # NaN never wins
    if not scored:
        return result.checkpoint, result.metrics or {}
    pick = max if mode == "max" else min
    return pick(scored, key=lambda pair: pair[1][metric])


def train_storage_dir(output_dir: str | Path) -> Path:
    """Where Ray Train keeps a run's checkpoints (the run itself is the RUN_NAME folder in it)."""
    return Path(output_dir).resolve() / "ray_train"


def final_model_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / MODEL_DIR


def write_run_outputs(output_dir: str | Path, history: list[dict], loss_curve: list) -> dict[str, Path]:
    """metrics.json (history), curves.json and curves.png beside the model; returns {name: path}."""
    out = Path(output_dir)
    with storage_errors(out, "creating"):
        out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out / "metrics.json", "curves_json": out / "curves.json", "curves_png": out / "curves.png"}
    # Each file whole or not replaced: a full disk leaves the previous run's files as they were.
    write_text_atomically(files["metrics"], json.dumps(history, indent=2))
    dev = {name: [[row["step"], row[name]] for row in history if row.get(name) == row.get(name) and name in row]
           for name in CURVE_METRICS}
    write_text_atomically(files["curves_json"], json.dumps({"train_loss": loss_curve, **dev}, indent=2))
    write_atomically(files["curves_png"], lambda tmp: plot_curves(tmp, loss_curve, dev))
    return files


def plot_curves(path: Path, loss_curve: list, dev: dict[str, list]) -> None:
    """Training loss by step (left axis) and dev metrics at each epoch's end (right axis)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    if loss_curve:
        ax.plot(*zip(*loss_curve), color="#555", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (RAG marginal NLL)")
    right = ax.twinx()
    for name, points in dev.items():
        if points:
            right.plot(*zip(*points), marker="o", label=name)
    right.set_ylabel("dev metric")
    right.set_ylim(0, 1.05)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
