"""TRAIN, driver side: validate everything, make sure the index and retrieval group exist, fit a TorchTrainer
whose workers run `pipeline/train/loop.py`, export the best model.

    run_finetune(cfg)
      prepare_run(cfg)        demo defaults, config/data/model/index checks, index build if missing, retrieval
                              group, the tokenized train Dataset (Ray Data)       -> PreparedRun
      make_trainer(...)       TorchTrainer(train_loop_per_worker), checkpoints under train.output_dir
      trainer.fit()
      export                  best checkpoint by train.best_metric -> train.output_dir/model, curves, metrics
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer
from transformers import AutoConfig

from pipeline.config import RunConfig, TrainConfig
from pipeline.index.build import build_index
from pipeline.index.settings import IndexSettings
from pipeline.model.encoders import encoder_label
from pipeline.model.generators import kind_of_config
from pipeline.output import train_logging_config
from pipeline.progress import say
from pipeline.retrieval.group import start_retrieval_group, stop_retrieval_group
from pipeline.retrieval.modes import retrieval_mode
from pipeline.retrieval.recovery import GroupLostError, forget_run, run_failure
from pipeline.train import checkpoints
from pipeline.train.checks import check_config_fits_index, check_model_fits_index
from pipeline.train.loop import train_loop_per_worker
from pipeline.train.qa_data import QATokenizer, check_training_inputs, read_qa_dataset


@dataclass
class PreparedRun:
    """What `prepare_run` leaves ready for one or many trainers (Tune trials share it)."""

    train_dataset: object  # ray.data.Dataset of tokenized QA examples
    train_examples: int
    dev_examples: int
    index: IndexSettings  # what the served index decides (encoder, pooling, passage length), for the workers


@dataclass
class FinetuneResult:
    metrics: dict  # the last epoch's metrics
    history: list[dict]
    model_dir: Path  # the exported (best) model
    best_metric: str  # what chose the exported epoch
    best_epoch: int | None
    files: dict[str, Path]  # metrics, curves_json, curves_png
    refreshes: list[dict]  # one row per finished index refresh: version, passages, embed/build/swap s, behind_steps


def run_finetune(cfg: RunConfig) -> FinetuneResult:
    """Prepare, train and export one fine-tuning run on a connected Ray.

    Everything that can be wrong with the input fails in `prepare_run`, before any worker starts.
    """
    prepared = prepare_run(cfg)
    t = cfg.train
    storage = checkpoints.train_storage_dir(t.output_dir)
    if not t.resume and (storage / checkpoints.RUN_NAME).exists():
        shutil.rmtree(storage / checkpoints.RUN_NAME)
    say(describe_training(cfg, prepared))
    run_id = uuid.uuid4().hex
    result = fit_run(make_trainer(cfg, prepared, run_id=run_id), run_id)
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint (see {storage})")
    history = checkpoints.read_history(result.checkpoint.path)
    best, best_metrics = checkpoints.best_checkpoint(result, t.best_metric, t.best_mode)
    model_dir = checkpoints.export_model(best, checkpoints.final_model_dir(t.output_dir))
    state = _final_state(result.checkpoint)
    files = checkpoints.write_run_outputs(t.output_dir, history, state["loss_curve"])
    return FinetuneResult(history[-1] if history else {}, history, model_dir, t.best_metric, best_metrics.get("epoch"),
                          files, state["refresh"].get("done", []))


def prepare_run(cfg: RunConfig) -> PreparedRun:
    """Everything before training: demo defaults, checks, index (built if missing), retrieval group, datasets.

    What the index decides (encoder, pooling, passage length) comes back as `PreparedRun.index`, for the workers;
    a setting of the user's that disagrees with it is a ConfigError naming both.
    """
    reports = check_training_inputs(cfg)  # demo defaults, option checks, every train/dev row (cached per file)
    _make_paths_absolute(cfg)
    for split, report in reports.items():
        say(f"[finetune] {split}: {report.path}, {report.valid} examples"
            + (f", {report.skipped} invalid rows skipped" if report.skipped else ""))
    if not Path(cfg.index.directory).exists():
        say(f"[finetune] no index at {cfg.index.directory}: building it from {cfg.knowledge_base.documents}")
        build_index(cfg.knowledge_base, cfg.index)
    index = IndexSettings.read(cfg.index.directory)
    check_config_fits_index(cfg, index)
    check_model_fits_index(cfg, index)
    say(f"[finetune] index: {cfg.index.directory}, {index.count} passages, {index.factory}, "
        f"{index.num_shards} shard(s), encoder {encoder_label(index.encoder)} ({index.pooling} pooling)")
    if retrieval_mode(cfg.retrieval.mode).uses_group:
        members = start_retrieval_group(cfg.index.directory, cfg.retrieval)
        say(f"[finetune] retrieval group {cfg.retrieval.group!r} ({cfg.retrieval.namespace}): {len(members)} "
            f"actor(s), {index.num_shards} shard(s) x {cfg.retrieval.replicas} replica(s)")
    tokenizer = QATokenizer(index.question_encoder(cfg.model.question_encoder), cfg.model.generator,
                            cfg.model.max_question_length, cfg.model.max_target_length)
    train = read_qa_dataset(cfg.data.train, cfg.data).map_batches(tokenizer, batch_format="numpy")
    return PreparedRun(train, reports["train"].valid, reports["dev"].valid, index)


def describe_training(cfg: RunConfig, prepared: PreparedRun) -> str:
    """One line saying what the trainer is about to do."""
    t, m = cfg.train, cfg.model
    steps = steps_per_epoch(prepared.train_examples, t)
    total = steps * t.epochs if t.max_steps < 0 else min(t.max_steps, steps * t.epochs)
    encoders = []
    if m.train_question_encoder:
        encoders.append(f"question encoder from step {t.encoder_freeze_steps}")
    if m.train_context_encoder:
        encoders.append(f"context encoder from step {t.context_encoder_freeze_steps}")
    refresh = (f", index refreshed every {cfg.refresh.every_steps} steps"
               f"{' (blocking)' if cfg.refresh.blocking else ' in the background'}"
               if cfg.refresh.every_steps else "")
    kind = kind_of_config(AutoConfig.from_pretrained(m.generator)).name
    trained = (["the generator"] if t.train_generator else []) + encoders
    retriever_loss = ", retriever by distillation" if m.retriever_loss == "distill" else ""
    return (f"[finetune] training {m.model_type} with a {kind} generator, n_docs {m.n_docs}, retrieval "
            f"{cfg.retrieval.mode}: {t.num_workers} worker(s) x batch {t.batch_size}, {steps} steps/epoch, {total} "
            f"steps in all; trains {', '.join(trained)}{retriever_loss}{refresh}; output {t.output_dir}")


def fit_run(trainer, run_id: str):
    """trainer.fit(); GroupLostError if the workers ended the run because its retrieval group was lost for good
    (they stop without raising, so that Ray Train spends no restart on it: pipeline/retrieval/recovery.py)."""
    try:
        result = trainer.fit()
        failure = run_failure(run_id)
    finally:
        forget_run(run_id)
    if failure:
        raise GroupLostError(failure)
    return result


def make_trainer(cfg: RunConfig, prepared: PreparedRun, callbacks=(), run_id: str = ""):
    """The TorchTrainer of one fine-tuning run (`run_id`: the key of its retrieval group's restart budget; ""
    for none). Checkpoints live under train.output_dir/ray_train/finetune, so a
    rerun (or a restarted Tune trial) with the same output_dir resumes from the latest; the best by
    train.best_metric is kept beside it for export."""
    t = cfg.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.to_dict(), "index": prepared.index.to_dict(),
                           "steps_per_epoch": steps_per_epoch(prepared.train_examples, t), "run_id": run_id},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RayRunConfig(
            name=checkpoints.RUN_NAME, storage_path=str(checkpoints.train_storage_dir(t.output_dir)),
            failure_config=FailureConfig(max_failures=t.max_failures),
            # Ray Train always keeps the latest checkpoint (resume needs it) besides the best one scored here.
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=t.best_metric,
                                               checkpoint_score_order=t.best_mode),
            callbacks=list(callbacks),
            logging_config=train_logging_config(),  # Ray Train's INFO lines only with --verbose
        ),
        datasets={"train": prepared.train_dataset},
    )


def steps_per_epoch(train_examples: int, t: TrainConfig) -> int:
    """Optimizer steps in one pass over `train_examples` (each step: batch_size x grad_accum per worker)."""
    return max(1, train_examples // (t.batch_size * t.num_workers * t.grad_accum))


def _final_state(checkpoint) -> dict:
    """The TrainState (as saved: a dict) of the run's last checkpoint."""
    import torch

    with checkpoint.as_directory() as ckpt:
        saved = torch.load(Path(ckpt) / checkpoints.STATE_FILE, weights_only=True, map_location="cpu")
    return saved["state"]


def _make_paths_absolute(cfg: RunConfig) -> None:
    """Workers run in another directory than the driver: local paths must not be relative."""
    cfg.index.directory = str(Path(cfg.index.directory).resolve())
    cfg.train.output_dir = str(Path(cfg.train.output_dir).resolve())
    if cfg.refresh.location:
        cfg.refresh.location = str(Path(cfg.refresh.location).resolve())
    for section, key in (("data", "train"), ("data", "dev"), ("data", "test"), ("model", "generator"),
                         ("model", "question_encoder"), ("model", "context_encoder"),
                         ("knowledge_base", "documents")):
        value = getattr(getattr(cfg, section), key)
        if value and Path(value).exists():
            setattr(getattr(cfg, section), key, str(Path(value).resolve()))


def group_lifetime_note(cfg: RunConfig, session, job: str) -> str | None:
    """One line for a job that keeps its retrieval group running on a cluster it started itself: the group ends
    with that cluster when the job exits, so the job must not let `retrieval.keep_running` promise more."""
    keeps_a_group = retrieval_mode(cfg.retrieval.mode).uses_group and cfg.retrieval.keep_running
    if session is None or session.joined or not keeps_a_group:
        return None
    return (f"[{job}] no Ray cluster was running, so this job runs on its own (at {session.address}): retrieval "
            f"group {cfg.retrieval.group!r} ends with it when the job exits; to keep the group for later jobs, "
            f"start a cluster first with `ray start --head`")


def stop_group_unless_kept(cfg: RunConfig) -> None:
    """Tear the retrieval group down after a job when the config says not to keep it."""
    if retrieval_mode(cfg.retrieval.mode).uses_group and not cfg.retrieval.keep_running:
        stop_retrieval_group(cfg.retrieval.group, cfg.retrieval.namespace)


SUMMARY_METRICS = ("epoch", "step", "train_loss", "dev_exact_match", "dev_f1", "dev_hit@k", "dev_recall@1")


def format_summary(result: FinetuneResult) -> str:
    """The run's closing table: one row per epoch (the exported one marked *), then where the outputs are."""
    keys = list(SUMMARY_METRICS) + [k for k in ("retrieval_s_per_call", "refreshes", "checkpoint_mb")
                                    if result.history and k in result.history[-1]]
    lines = ["  " + " ".join(f"{k:>15}" for k in keys)]
    for row in result.history:
        mark = "*" if row.get("epoch") == result.best_epoch else " "
        lines.append(mark + " " + " ".join(f"{row.get(k, float('nan')):>15.4g}" if isinstance(row.get(k), float)
                                           else f"{row.get(k, ''):>15}" for k in keys))
    lines.append(f"[finetune] model (epoch {result.best_epoch}, best by {result.best_metric}): {result.model_dir}")
    lines.append(f"[finetune] curves: {result.files['curves_png']}, metrics: {result.files['metrics']}")
    return "\n".join(lines)
