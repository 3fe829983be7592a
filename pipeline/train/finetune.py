"""TRAIN: Ray Data -> TorchTrainer workers -> retrieval group -> RAG loss.

`train_loop_per_worker` is the whole per-worker recipe (set up, loop, evaluate,
report); `run_finetune` is the driver side (validate everything, start or find
the retrieval group, build the datasets, fit, export the final model).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import RunConfig, TrainConfig, config_from_dict

CHECKPOINT_MODEL = "model"
CHECKPOINT_STATE = "training_state.pt"
CHECKPOINT_HISTORY = "history.json"


# ----------------------------------------------------------------------------- worker side

def lr_lambda(step: int, warmup: int, total: int, schedule: str):
    """Multiplier of the base learning rate: linear warm-up, then linear or polynomial (power 2) decay to 0."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return (1.0 - progress) ** (2.0 if schedule == "polynomial" else 1.0)


def _optimizer(parts, cfg: RunConfig) -> torch.optim.Optimizer:
    encoder = list(parts.model.question_encoder.parameters())
    encoder_ids = {id(p) for p in encoder}
    generator = [p for p in parts.model.parameters() if id(p) not in encoder_ids]
    groups = [{"params": generator, "lr": cfg.train.lr}]
    if cfg.model.train_question_encoder:
        groups.append({"params": encoder, "lr": cfg.train.encoder_lr})
    else:
        for p in encoder:
            p.requires_grad_(False)
    return torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)


def _save_checkpoint(directory: Path, parts, optimizer, scheduler, state: dict, history: list[dict]) -> None:
    from pipeline.model.rag import save_rag_model

    save_rag_model(parts, directory / CHECKPOINT_MODEL)
    # Tensors and plain numbers only, so loading can use weights_only=True (no pickled code).
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **state},
               directory / CHECKPOINT_STATE)
    (directory / CHECKPOINT_HISTORY).write_text(json.dumps(history))


def _autocast(cfg: RunConfig, device: torch.device):
    if device.type != "cuda" or cfg.train.precision == "no":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if cfg.train.precision == "bf16" else torch.float16)


def _say(line: str) -> None:
    """A progress line from a worker, printed once: Ray Train patches print() in its workers to also send
    each line through the logging module, and both copies reach the driver."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every TorchTrainer worker. loop_config: {"run": RunConfig dict, "steps_per_epoch": int}."""
    import ray.train
    import ray.train.torch
    from transformers.utils import logging as hf_logging

    from pipeline.model.rag import build_rag_model, load_rag_model
    from pipeline.model.rag_with_retrieval import RagWithRetrieval
    from pipeline.retrieval.factory import make_retriever
    from pipeline.train.evaluation import gather_rows, predict, summarize_rows
    from pipeline.train.qa_data import load_qa_examples

    # --- set up
    cfg = config_from_dict(loop_config["run"])
    t = cfg.train
    hf_logging.disable_progress_bar()  # one bar per checkpoint save and model load, from every worker
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(t.seed)
    if not t.use_gpu:
        torch.set_num_threads(max(1, int(t.cpus_per_worker)))

    checkpoint = ray.train.get_checkpoint()
    state, history = {"epoch": 0, "step": 0}, []
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt:
            parts = load_rag_model(Path(ckpt) / CHECKPOINT_MODEL)
            saved = torch.load(Path(ckpt) / CHECKPOINT_STATE, weights_only=True, map_location="cpu")
            history = json.loads((Path(ckpt) / CHECKPOINT_HISTORY).read_text())
        state = {"epoch": saved["epoch"], "step": saved["step"]}
    else:
        parts = build_rag_model(cfg.model.question_encoder, cfg.model.generator, cfg.model.model_type,
                                loop_config["pooling"], cfg.model.label_smoothing, cfg.model.dropout)
    resumed_at_step = state["step"]  # > 0 when this attempt restored a checkpoint (resume or worker failure)
    parts.model.config.label_smoothing = cfg.model.label_smoothing
    retriever = make_retriever(cfg.retrieval.mode, cfg.index.directory, cfg.retrieval, rank)
    rag = RagWithRetrieval(parts, retriever, cfg.model, seed=t.seed + rank)
    model = ray.train.torch.prepare_model(rag, parallel_strategy_kwargs={"find_unused_parameters": False})
    rag.train()

    optimizer = _optimizer(parts, cfg)
    steps_per_epoch = loop_config["steps_per_epoch"]
    total_steps = steps_per_epoch * t.epochs if t.max_steps < 0 else min(t.max_steps, steps_per_epoch * t.epochs)
    schedules = [lambda s: lr_lambda(s, t.warmup_steps, total_steps, t.schedule)]
    if len(optimizer.param_groups) > 1:  # the question encoder: held at lr 0, then its own warm-up and decay
        schedules.append(lambda s: 0.0 if s < t.encoder_freeze_steps else lr_lambda(
            s - t.encoder_freeze_steps, t.warmup_steps, max(1, total_steps - t.encoder_freeze_steps), t.schedule))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    if checkpoint is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    dev = load_qa_examples(cfg.data.dev, cfg.data, limit=t.eval_max_examples)
    shard = ray.train.get_dataset_shard("train")
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda" and t.precision == "fp16")

    # --- loop
    for epoch in range(state["epoch"], t.epochs):
        if 0 <= t.max_steps <= state["step"]:
            break
        losses, started, micro = [], time.perf_counter(), 0
        rag.retrieval_seconds.clear()
        for batch in shard.iter_batches(batch_size=t.batch_size, batch_format="numpy", drop_last=True):
            with _autocast(cfg, device):
                # torch.tensor copies: Ray Data hands out read-only arrays.
                loss = model(list(batch["question"]), torch.tensor(batch["question_ids"], device=device),
                             torch.tensor(batch["question_mask"], device=device),
                             torch.tensor(batch["labels"], device=device))
            scaler.scale(loss / t.grad_accum).backward()
            losses.append(loss.item())
            micro += 1
            if micro % t.grad_accum:
                continue
            if t.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state["step"] += 1
            if rank == 0 and state["step"] % 20 == 0:
                _say(f"[train] epoch {epoch + 1} step {state['step']}/{total_steps} "
                     f"loss {np.mean(losses[-20:]):.3f}")
            if 0 <= t.max_steps <= state["step"]:
                break
        train_s = time.perf_counter() - started
        retrieval_calls = list(rag.retrieval_seconds)

        # --- evaluate
        rows = gather_rows(predict(rag, dev, t.batch_size, rank, world), world)
        metrics = {"epoch": epoch + 1, "step": state["step"], "resumed_at_step": resumed_at_step,
                   "train_loss": float(np.mean(losses)) if losses else float("nan"), "epoch_s": round(train_s, 2),
                   **summarize_rows(rows, prefix="dev_")}
        if t.profile and retrieval_calls:
            metrics["retrieval_s_per_call"] = float(np.mean(retrieval_calls))
            metrics["retrieval_share_of_epoch"] = float(np.sum(retrieval_calls) / max(train_s, 1e-9))
        history.append(metrics)
        if rank == 0:
            _say("[train] " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in metrics.items()))

        # --- report (rank 0 carries the checkpoint; every rank reports so Train keeps them in step)
        state["epoch"] = epoch + 1
        last = epoch + 1 == t.epochs or 0 <= t.max_steps <= state["step"]
        if rank == 0 and (state["epoch"] % t.checkpoint_every_epochs == 0 or last):
            with tempfile.TemporaryDirectory() as tmp:
                _save_checkpoint(Path(tmp), parts, optimizer, scheduler, dict(state), history)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


# ----------------------------------------------------------------------------- driver side

@dataclass
class FinetuneResult:
    metrics: dict
    history: list[dict]
    model_dir: Path
    checkpoint_dir: str


def run_finetune(cfg: RunConfig) -> FinetuneResult:
    """Validate inputs, make sure the index and retrieval group exist, fit a TorchTrainer, export the model.

    Needs a connected Ray. Everything that can be wrong with the input fails here, before any training step.
    """
    from pipeline.model.rag import load_rag_model

    prepared = prepare_run(cfg)
    t = cfg.train
    storage = train_storage_dir(t)
    if not t.resume and (storage / "finetune").exists():
        shutil.rmtree(storage / "finetune")
    trainer = make_trainer(cfg, prepared["train_dataset"], prepared["train_examples"], prepared["pooling"])
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint (see {storage})")
    model_dir = Path(t.output_dir) / "model"
    with result.checkpoint.as_directory() as ckpt:
        history = json.loads((Path(ckpt) / CHECKPOINT_HISTORY).read_text())
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(Path(ckpt) / CHECKPOINT_MODEL, model_dir)
    load_rag_model(model_dir)  # the exported model must load on its own before we say it exists
    (Path(t.output_dir) / "metrics.json").write_text(json.dumps(history, indent=2))
    return FinetuneResult(history[-1] if history else {}, history, model_dir, result.checkpoint.path)


def prepare_run(cfg: RunConfig) -> dict:
    """Everything before training: demo defaults, config/data/model/index checks, retrieval group, datasets."""
    from pipeline.demo.defaults import fill_demo_defaults
    from pipeline.index.build import build_index
    from pipeline.index.manifest import read_manifest
    from pipeline.train.checks import check_model_fits_index, check_run_config
    from pipeline.train.qa_data import QATokenizer, check_qa_file, read_qa_dataset

    fill_demo_defaults(cfg)
    check_run_config(cfg)
    _make_paths_absolute(cfg)
    reports = {split: check_qa_file(getattr(cfg.data, split), cfg.data) for split in ("train", "dev")}
    for report in reports.values():
        print(f"[finetune] {report.path}: {report.valid} examples"
              + (f", {report.skipped} invalid rows skipped" if report.skipped else ""), flush=True)
    if not Path(cfg.index.directory).exists():
        print(f"[finetune] no index at {cfg.index.directory}: building it from {cfg.knowledge_base.documents}")
        build_index(cfg.knowledge_base, cfg.index)
    manifest = read_manifest(cfg.index.directory)
    question_encoder = cfg.model.question_encoder or manifest.encoder
    cfg.model.question_encoder = question_encoder
    check_model_fits_index(question_encoder, cfg.model.generator, manifest, cfg.index.directory)
    if cfg.retrieval.mode == "ray":
        from pipeline.retrieval.group import start_retrieval_group

        members = start_retrieval_group(cfg.index.directory, cfg.retrieval)
        print(f"[finetune] retrieval group {cfg.retrieval.group!r}: {len(members)} actors over "
              f"{manifest.count} passages", flush=True)
    tokenizer = QATokenizer(question_encoder, cfg.model.generator, cfg.model.max_question_length,
                            cfg.model.max_target_length)
    train = read_qa_dataset(cfg.data.train, cfg.data).map_batches(tokenizer, batch_format="numpy")
    return {"train_dataset": train, "pooling": manifest.pooling, "train_examples": reports["train"].valid}


def train_storage_dir(t: TrainConfig) -> Path:
    """Where Ray Train keeps a run's checkpoints (the run itself is the "finetune" folder in it)."""
    return Path(t.output_dir).resolve() / "ray_train"


def make_trainer(cfg: RunConfig, train_dataset, train_examples: int, pooling: str, callbacks=()):
    """The TorchTrainer of one fine-tuning run; its checkpoints live under train.output_dir/ray_train/finetune,
    so a rerun (or a restarted Tune trial) with the same output_dir resumes from the latest one."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    t = cfg.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.to_dict(), "steps_per_epoch": steps_per_epoch(train_examples, t),
                           "pooling": pooling},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RayRunConfig(
            name="finetune", storage_path=str(train_storage_dir(t)),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=list(callbacks),
        ),
        datasets={"train": train_dataset},
    )


def steps_per_epoch(train_examples: int, t: TrainConfig) -> int:
    """Optimizer steps in one pass over `train_examples` (each step: batch_size x grad_accum per worker)."""
    return max(1, train_examples // (t.batch_size * t.num_workers * t.grad_accum))


def _make_paths_absolute(cfg: RunConfig) -> None:
    """Workers run in another directory than the driver: local paths must not be relative."""
    cfg.index.directory = str(Path(cfg.index.directory).resolve())
    cfg.train.output_dir = str(Path(cfg.train.output_dir).resolve())
    for section, key in (("data", "train"), ("data", "dev"), ("data", "test"), ("model", "generator"),
                         ("model", "question_encoder"), ("knowledge_base", "documents")):
        value = getattr(getattr(cfg, section), key)
        if value and Path(value).exists():
            setattr(getattr(cfg, section), key, str(Path(value).resolve()))


def stop_group_unless_kept(cfg: RunConfig) -> None:
    """Tear the retrieval group down after a job when the config says not to keep it."""
    if cfg.retrieval.mode == "ray" and not cfg.retrieval.keep_running:
        from pipeline.retrieval.group import stop_retrieval_group

        stop_retrieval_group(cfg.retrieval.group, cfg.retrieval.namespace)


def format_history(history: list[dict]) -> str:
    """A small table of per-epoch metrics for the terminal."""
    keys = ["epoch", "step", "train_loss", "dev_exact_match", "dev_f1", "dev_hit@k", "dev_recall@1"]
    keys += [k for k in ("retrieval_s_per_call",) if history and k in history[0]]
    lines = [" ".join(f"{k:>16}" for k in keys)]
    for row in history:
        lines.append(" ".join(f"{row.get(k, float('nan')):>16.4g}" if isinstance(row.get(k), float)
                              else f"{row.get(k, ''):>16}" for k in keys))
    return "\n".join(lines)
