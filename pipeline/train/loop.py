"""The per-worker training recipe that every TorchTrainer worker runs: set up (or resume), then per epoch
train, evaluate and report. Read it top to bottom; the model math is in pipeline/model, retrieval in
pipeline/retrieval, the checkpoint format in pipeline/train/checkpoints.py.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from transformers.utils import logging as hf_logging

from pipeline.config import RunConfig, config_from_dict
from pipeline.index.settings import IndexSettings
from pipeline.model.generators import kind_of
from pipeline.model.lora import add_lora, lora_settings, parameter_counts
from pipeline.model.rag import build_rag_model
from pipeline.model.rag_with_retrieval import RagWithRetrieval
from pipeline.progress import Progress, say
from pipeline.retrieval.factory import make_retriever
from pipeline.retrieval.modes import retrieval_mode
from pipeline.retrieval.recovery import GroupLostError, record_run_failure
from pipeline.train.checkpoints import TrainState, restore_checkpoint, save_checkpoint
from pipeline.train.evaluation import gather_rows, predict, summarize_rows
from pipeline.train.optimizer import build_optimizer
from pipeline.train.qa_data import load_qa_examples
from pipeline.train.refresh_schedule import IndexRefresh


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every TorchTrainer worker. loop_config: {"run": RunConfig dict, "index": IndexSettings dict,
    "steps_per_epoch": int, "run_id": str}."""
    run_id = loop_config.get("run_id", "")
    run = set_up(config_from_dict(loop_config["run"]), IndexSettings(**loop_config["index"]),
                 loop_config["steps_per_epoch"], run_id)
    try:
        for epoch in range(run.state.epoch, run.cfg.train.epochs):
            if run.done():
                break
            losses, train_s = train_one_epoch(run, epoch)
            metrics = evaluate(run, epoch, losses, train_s)
            report(run, metrics)
    except GroupLostError as lost:
        # Every rank gets here at the same step (_agree_group_alive) and returns: a raise would have Ray Train
        # restart the workers (max_failures) against a group that is gone. The driver raises the reason.
        if not isinstance(lost, _LostOnAnotherRank):
            record_run_failure(run_id, str(lost))
    finally:
        run.close()


@dataclass
class WorkerRun:
    """Everything one worker holds for a run."""

    cfg: RunConfig
    rank: int
    world: int
    device: torch.device
    parts: object  # RagParts
    rag: object  # RagWithRetrieval: the module the loss and answers come from
    model: torch.nn.Module  # `rag` as Ray Train prepared it (DDP across workers)
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    dev: list
    state: TrainState
    history: list[dict]
    steps_per_epoch: int
    total_steps: int
    resumed_at_step: int  # > 0 when this attempt restored a checkpoint (resume or worker failure)
    refresh: object = None  # IndexRefresh on rank 0 when refresh.every_steps > 0, else None

    def done(self) -> bool:
        return self.state.step >= self.total_steps

    def close(self) -> None:
        if self.refresh is not None:
            self.refresh.close(self.state.step)


def set_up(cfg: RunConfig, index: IndexSettings, steps_per_epoch: int, run_id: str = "") -> WorkerRun:
    """Build or restore the model, connect to retrieval, wrap for DDP, restore optimizer state and refresh schedule."""
    t = cfg.train
    hf_logging.disable_progress_bar()  # one bar per checkpoint save and model load, from every worker
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(t.seed)
    if not t.use_gpu:
        torch.set_num_threads(max(1, int(t.cpus_per_worker)))

    checkpoint = ray.train.get_checkpoint()
    restored = restore_checkpoint(checkpoint) if checkpoint is not None else None
    if restored is not None:
        parts, state, history = restored.parts, restored.state, restored.history
    else:
        m = cfg.model
        parts = build_rag_model(index.question_encoder(m.question_encoder), m.generator, m.model_type, index.pooling,
                                m.label_smoothing, m.dropout,
                                context_encoder=index.context_encoder(m.context_encoder) if m.train_context_encoder
                                else None)
        settings = lora_settings(m, m.generator)
        if settings is not None:
            add_lora(parts, settings)
        state, history = TrainState(), []
    kind_of(parts).configure(parts, cfg.model)  # label smoothing, a causal LM's prompt template
    if t.gradient_checkpointing:
        parts.head.generator.activation_checkpointing_enable()
    retriever = make_retriever(cfg.retrieval.mode, cfg.index.directory, cfg.retrieval, rank, run_id=run_id,
                               step=lambda: state.step)
    rag = RagWithRetrieval.for_run(parts, retriever, cfg, index, seed=t.seed + rank)
    model = ray.train.torch.prepare_model(rag, parallel_strategy_kwargs={"find_unused_parameters": False})
    rag.train()

    total_steps = steps_per_epoch * t.epochs if t.max_steps < 0 else min(t.max_steps, steps_per_epoch * t.epochs)
    optimizer, scheduler = build_optimizer(parts, cfg, total_steps)
    if restored is not None:
        optimizer.load_state_dict(restored.optimizer)
        scheduler.load_state_dict(restored.scheduler)
    refresh = None
    if rank == 0 and cfg.refresh.every_steps > 0:
        refresh = IndexRefresh(cfg, index, state)
    if rank == 0:
        trainable, total = parameter_counts(parts)
        lora = f", LoRA r={cfg.model.lora_r} on the generator" if parts.lora is not None else ""
        say(f"[train] trainable parameters: {trainable:,} of {total:,}{lora}")
    dev = load_qa_examples(cfg.data.dev, cfg.data, limit=t.eval_max_examples)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda" and t.precision == "fp16")
    return WorkerRun(cfg, rank, world, device, parts, rag, model, optimizer, scheduler, scaler, dev, state, history,
                     steps_per_epoch, total_steps, resumed_at_step=state.step, refresh=refresh)


def train_one_epoch(run: WorkerRun, epoch: int) -> tuple[list[float], float]:
    """One pass over this worker's shard of the training data; returns (per-batch losses, seconds)."""
    t = run.cfg.train
    losses, curve_losses, micro = [], [], 0
    run.rag.retrieval_seconds.clear()
    steps_left = run.total_steps - run.state.step
    progress = Progress(f"train epoch {epoch + 1}", min(steps_left, run.steps_per_epoch), "steps", every_s=15) \
        if run.rank == 0 else None
    shard = ray.train.get_dataset_shard("train")
    for batch in shard.iter_torch_batches(batch_size=t.batch_size, drop_last=True,
                                          collate_fn=TrainingBatch(run.device)):
        loss = step_loss(run, batch)
        run.scaler.scale(loss / t.grad_accum).backward()
        losses.append(loss.item())
        curve_losses.append(losses[-1])
        micro += 1
        if micro % t.grad_accum:
            continue
        optimizer_step(run)
        if run.state.step % t.log_every_steps == 0:
            run.state.loss_curve.append([run.state.step, float(np.mean(curve_losses))])
            curve_losses.clear()
        if run.refresh is not None:
            run.refresh.after_step(run.state.step, run.parts)
        if progress:
            progress.update(1, loss=float(np.mean(losses[-t.log_every_steps:])))
        if run.done():
            break
    train_s = progress.finish(loss=float(np.mean(losses)) if losses else float("nan")) if progress else 0.0
    if run.refresh is not None and run.done():
        run.refresh.finish(run.state.step)  # training is over: let the last refresh land before the evaluation
    return losses, train_s


def step_loss(run: WorkerRun, batch: dict) -> torch.Tensor:
    """The model's loss on one micro-batch (its forward calls retrieval: the Ray boundary of the step)."""
    lost = None
    try:
        with _autocast(run.cfg, run.device):
            loss = run.model(batch["question"], batch["question_ids"], batch["question_mask"], batch["labels"])
    except GroupLostError as e:
        lost = e
    _agree_group_alive(run, lost)
    return loss


class _LostOnAnotherRank(GroupLostError):
    """Raised on the ranks whose own calls still worked when another rank's group was lost for good."""


def _agree_group_alive(run: WorkerRun, lost: GroupLostError | None) -> None:
    """Called by every rank at the same point: GroupLostError on all of them if any rank's retrieval group is
    lost for good, so that none is left waiting in the gradient all-reduce for a rank that stopped. One
    one-element all-reduce per micro-batch, only for a mode served by the group, with more than one worker."""
    if run.world > 1 and retrieval_mode(run.cfg.retrieval.mode).uses_group:
        flag = torch.tensor([0.0 if lost is None else 1.0], device=run.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and lost is None:
            lost = _LostOnAnotherRank("the retrieval group was lost for good on another worker")
    if lost is not None:
        raise lost


def optimizer_step(run: WorkerRun) -> None:
    """Clip, step, zero the gradients, advance the schedule: one optimizer step of the run."""
    t = run.cfg.train
    if t.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.state.step += 1


def evaluate(run: WorkerRun, epoch: int, losses: list[float], train_s: float) -> dict:
    """Dev metrics of the model as it stands (every rank scores its share; all ranks get every row)."""
    t = run.cfg.train
    retrieval_calls = list(run.rag.retrieval_seconds)
    lost = None
    try:
        mine = predict(run.rag, run.dev, t.batch_size, run.rank, run.world, progress_label=f"dev epoch {epoch + 1}")
    except GroupLostError as e:
        lost = e
    _agree_group_alive(run, lost)
    rows = gather_rows(mine, run.world)
    metrics = {"epoch": epoch + 1, "step": run.state.step, "resumed_at_step": run.resumed_at_step,
               "train_loss": float(np.mean(losses)) if losses else float("nan"), "epoch_s": round(train_s, 2),
               **summarize_rows(rows, prefix="dev_")}
    # Summed over ranks: a call that failed on any worker counts (a failure that ended an attempt shows as a
    # restore instead: resumed_at_step).
    metrics["retrieval_failed_calls"] = int(sum(gather_rows([run.rag.failed_calls], run.world)))
    if t.profile and retrieval_calls:
        metrics["retrieval_s_per_call"] = float(np.mean(retrieval_calls))
        metrics["retrieval_share_of_epoch"] = float(np.sum(retrieval_calls) / max(train_s, 1e-9))
    if run.refresh is not None:
        metrics.update(run.refresh.metrics())
    if run.rank == 0:
        say(f"[train] epoch {epoch + 1}: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
            if k in ("step", "train_loss", "dev_exact_match", "dev_f1", "dev_recall@1", "refreshes")))
    return metrics


def report(run: WorkerRun, metrics: dict) -> None:
    """Report the epoch to Ray Train; rank 0 attaches a checkpoint when one is due (every rank reports, so Train
    keeps the workers in step)."""
    t = run.cfg.train
    run.history.append(metrics)
    run.state.epoch = metrics["epoch"]
    last = run.state.epoch == t.epochs or run.done()
    if run.rank == 0 and (run.state.epoch % t.checkpoint_every_epochs == 0 or last):
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp), run.parts, run.optimizer, run.scheduler, run.state, run.history)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


class TrainingBatch(NumpyBatchCollateFn):
    """Ray Data collate function for the tokenized QA columns (`QATokenizer`): int64 tensors on the worker's
    device, and the question strings as a list (the generator's inputs are "passage // question" strings)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, batch: dict) -> dict:
        # torch.tensor copies: Ray Data hands out read-only arrays, which torch will not wrap.
        out = {name: torch.tensor(batch[name], dtype=torch.long, device=self.device)
               for name in ("question_ids", "question_mask", "labels")}
        out["question"] = [str(q) for q in batch["question"]]
        return out


def _autocast(cfg: RunConfig, device: torch.device):
    """bf16 on the CPU or GPU the worker has; fp16 on GPU only (check_run_config refuses it on CPU)."""
    precision = cfg.train.precision
    if precision == "no" or (precision == "fp16" and device.type != "cuda"):
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


