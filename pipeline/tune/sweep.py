"""TUNE: a Ray Tune sweep whose every trial is one whole fine-tuning run, all trials sharing ONE retrieval group.

    run_tune(cfg)
      check_sweep_config(cfg)            bad keys, distributions or metric: ConfigError before anything starts
      prepare_run(cfg)                   ONCE: demo defaults, checks, index build, retrieval group, train dataset
      Tuner(train_trial, ASHA on the per-epoch reports, search space -> {"overrides": {dotted key: value}})
        train_trial(config)              a trial = the driver (~0 CPUs) of one TorchTrainer run
          TorchTrainer(train_loop_per_worker, callbacks=[TuneReportCallback()])   epoch metrics -> Tune
      write_sweep_results(...)           results CSV/JSON/PNG, best_config.yaml, best_model/

This is the Ray Train V2 pattern ("Hyperparameter Tuning with Ray Tune" in the Ray Train user guide): the Tune
function instantiates the trainer and calls fit(); `ray.tune.integration.ray_train.TuneReportCallback` hands
rank 0's reports (plus `checkpoint_path`) to Tune; each Train run is named by its trial, so a restored sweep
resumes unfinished runs from their checkpoints; `max_concurrent_trials` keeps waiting Train drivers from
piling up. Trials find the retrieval group by name (retrieval.mode ray): no trial loads an index.

Layout of tune.output_dir (on a multi-node cluster, storage every node sees, as train.output_dir is):
    sweep/                 the Tune experiment (restored when present)
    trials/<trial id>/     each trial's train.output_dir (its Train run, checkpoints)
    results.csv, results.json, <metric>_per_epoch.png, best_config.yaml, best_model/, sweep_config.yaml
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.tune
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from pipeline.config import RunConfig, apply_overrides, config_from_dict
from pipeline.errors import ConfigError, unwrap_pipeline_error
from pipeline.output import tune_verbosity
from pipeline.retrieval.group import start_retrieval_group, stop_retrieval_group
from pipeline.retrieval.group_record import list_members, served_version
from pipeline.train.checkpoints import read_history
from pipeline.train.finetune import fit_run, make_trainer, prepare_run
from pipeline.tune.results import write_sweep_results
from pipeline.tune.search_space import (
    TRIAL_DRIVER_CPUS,
    check_sweep_config,
    concurrent_trials,
    max_epochs,
    reported_metrics,
    to_tune_domains,
)

SWEEP_NAME = "sweep"
SWEEP_CONFIG = "sweep_config.yaml"


# ----------------------------------------------------------------------------- one trial

def train_trial(trial_config: dict, base: dict, prepared, trials_dir: str) -> None:
    """One Tune trial: fine-tune `base` + trial_config["overrides"] (dotted keys) as one TorchTrainer run.

    Runs as the Train driver inside the trial actor. Its per-epoch reports reach Tune via TuneReportCallback.
    """
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = apply_overrides(config_from_dict(base), _plain(trial_config["overrides"]))
    cfg.train.output_dir = str(Path(trials_dir) / trial_id)
    run_id = uuid.uuid4().hex  # the trial's own budget of retrieval group restarts
    if cfg.refresh.every_steps > 0:
        with own_retrieval_group(cfg, trial_id):
            fit_run(make_trainer(cfg, prepared, callbacks=[TuneReportCallback()], run_id=run_id), run_id)
    else:
        fit_run(make_trainer(cfg, prepared, callbacks=[TuneReportCallback()], run_id=run_id), run_id)


@contextmanager
def own_retrieval_group(cfg: RunConfig, trial_id: str):
    """Point `cfg` at a retrieval group of the trial's own, for a trial whose refreshes would otherwise move
    the group every trial shares to its own context encoder's index. The trial's group starts on the version the
    shared group serves (its files are shared, memory-mapped, not copied), publishes its refreshed versions in
    <trial output>/index, and is stopped when the trial ends; that location is kept beside the trial's model."""
    shared = served_version(cfg.retrieval.group, cfg.retrieval.namespace)
    cfg.retrieval.group = f"{cfg.retrieval.group}.{trial_id}"
    cfg.index.directory = str(shared.directory)
    cfg.refresh.location = str(Path(cfg.train.output_dir) / "index")
    start_retrieval_group(cfg.index.directory, cfg.retrieval)
    try:
        yield
    finally:
        stop_retrieval_group(cfg.retrieval.group, cfg.retrieval.namespace)


def _plain(overrides: dict) -> dict:
    """Sampled numpy scalars (tune.randint gives np.int64) as Python values, which set_key accepts."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in overrides.items()}


# ----------------------------------------------------------------------------- the sweep

@dataclass
class SweepResult:
    trials: list[dict]  # per trial: trial_id, status, overrides, metrics (last report), checkpoint_path, history
    best: dict  # the row of the best trial
    output_dir: Path
    files: dict[str, Path]  # results_csv, results_json, plot, best_config, best_model
    scheduler: Any  # the ASHA scheduler given to the Tuner (None when restored: Tune restores its own)
    restored: bool  # True when an earlier sweep in output_dir was resumed


def make_scheduler(cfg: RunConfig, space: dict):
    """ASHA over epochs: trials may stop at grace_period, x4, x16, ... epochs (metric and mode come from the Tuner).

    Stopping a trial kills its Train driver, and only Ray Train's placement-group cleaner (which needs the
    State API) then frees its workers' CPUs. So ASHA never stops a trial at its last report, where stopping
    saves nothing: no stop at max_t, and max_t below the last epoch keeps every rung before it. A grace period
    reaching the last epoch leaves no rung before it, so then no trial is stopped at all (FIFO).
    """
    last_epoch = max_epochs(cfg, space)
    if cfg.tune.grace_period >= last_epoch:
        return FIFOScheduler()
    # "epoch" rather than training_iteration: a Train run resumed from a checkpoint reports its true epoch.
    return ASHAScheduler(time_attr="epoch", max_t=max(cfg.tune.grace_period, last_epoch - 1),
                         grace_period=cfg.tune.grace_period, stop_last_trials=False)


def run_tune(cfg: RunConfig) -> SweepResult:
    """Sweep cfg.tune.search_space over whole fine-tuning runs on a connected Ray; resumes a sweep left in output_dir.

    Validates everything first (ConfigError before any trial), prepares the index and retrieval group once,
    then writes the results, the best config and the best model under cfg.tune.output_dir.
    """
    space = check_sweep_config(cfg)
    prepared = prepare_run(cfg)  # once for every trial; fills demo paths and makes them absolute
    out = Path(cfg.tune.output_dir).resolve()
    experiment = out / SWEEP_NAME
    restored = tune.Tuner.can_restore(experiment)
    _record_sweep_config(out, cfg, restored)

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=cfg.to_dict(), prepared=prepared, trials_dir=str(out / "trials")),
        {"CPU": TRIAL_DRIVER_CPUS},
    )
    if restored:
        print(f"[tune] resuming the sweep in {experiment} (finished trials are not rerun)", flush=True)
        tuner, scheduler = tune.Tuner.restore(str(experiment), trainable=trainable), None
    else:
        scheduler = make_scheduler(cfg, space)
        reserved = len(list_members(cfg.retrieval.group, cfg.retrieval.namespace)) * cfg.retrieval.actor_num_cpus
        concurrent = concurrent_trials(cfg, space, ray.cluster_resources(), reserved, prepared.index.num_shards)
        print(f"[tune] {cfg.tune.num_samples} trials, {concurrent} at a time, ASHA on {cfg.tune.metric} "
              f"({cfg.tune.mode}) per epoch, sharing retrieval group {cfg.retrieval.group!r}", flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space={"overrides": to_tune_domains(space)},
            tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, scheduler=scheduler,
                                        num_samples=cfg.tune.num_samples, max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=SWEEP_NAME, storage_path=str(out), verbose=tune_verbosity()),
        )
    grid = tuner.fit()
    rows = _trial_rows(grid, reported_metrics(cfg))
    unfinished = [row["trial_id"] for row in rows if row["status"] in ("pending", "running", "paused")]
    if unfinished:
        print(f"[tune] sweep interrupted with {len(unfinished)} trials unfinished; run the same command again to "
              f"resume them (results below are partial)", flush=True)
    if not any(cfg.tune.metric in row["metrics"] for row in rows):
        _raise_first_error(grid, f"no trial reported {cfg.tune.metric}; see {experiment}")
    best_id = grid.get_best_result(cfg.tune.metric, cfg.tune.mode, scope="last").metrics["trial_id"]
    best = next(row for row in rows if row["trial_id"] == best_id)
    best_config = apply_overrides(cfg, best["overrides"])
    best_config.train.output_dir = str(out / "best_finetune")  # a fresh run, not a resume of the trial's
    files = write_sweep_results(out, rows, best, best_config, cfg.tune.metric)
    return SweepResult(rows, best, out, files, scheduler, restored)


def _raise_first_error(grid, message: str) -> None:
    """The first trial's PipelineError as itself (one line, as if raised here), else RuntimeError(message)."""
    first = grid.errors[0] if grid.errors else None
    if first is None:
        raise RuntimeError(message)
    unwrapped = unwrap_pipeline_error(first)
    if unwrapped is not first:
        raise unwrapped
    raise RuntimeError(f"{message} (first error: {str(first).splitlines()[0]})")


def _trial_rows(grid, metric_names: list[str]) -> list[dict]:
    """One plain dict per trial of a ResultGrid, in trial-id order."""
    # Tune's own trial states (terminated, error, pending, running, paused); the ResultGrid keeps them only on
    # its analysis object, which its public num_terminated / num_errors read too.
    states = {trial.trial_id: trial.status.lower()
              for trial in getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []}
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        reports = [] if frame is None else frame.to_dict("records")
        checkpoints = [r["checkpoint_path"] for r in reports if isinstance(r.get("checkpoint_path"), str)]
        # A trial resumed by a restored sweep reports to Tune only the epochs after its checkpoint; the
        # checkpoint's own history holds the earlier ones.
        by_epoch = {h["epoch"]: h for h in (read_history(checkpoints[-1]) if checkpoints else [])}
        by_epoch.update({r["epoch"]: r for r in reports if r.get("epoch") == r.get("epoch")})  # NaN: no epoch
        history = [{k: r[k] for k in metric_names if k in r and r[k] == r[k]} for _, r in sorted(by_epoch.items())]
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        rows.append({
            "trial_id": trial_id,
            "status": "error" if result.error else states.get(trial_id, "terminated"),
            "overrides": _plain((result.config or {}).get("overrides", {})),
            "metrics": history[-1] if history else {},
            "checkpoint_path": checkpoints[-1] if checkpoints else None,
            "history": history,
            "error": str(result.error).splitlines()[0] if result.error else None,
        })
    return sorted(rows, key=lambda row: row["trial_id"])


def _record_sweep_config(out: Path, cfg: RunConfig, restoring: bool) -> None:
    """Write the sweep's config next to it; resuming a sweep under other settings is a ConfigError.

    A restored sweep runs its saved search space and trials: other settings would mix two sweeps in one.
    """
    path = out / SWEEP_CONFIG
    current = cfg.to_dict()
    if restoring and path.is_file():
        saved = yaml.safe_load(path.read_text())
        changed = [f"{section}.{key}" for section, values in current.items() for key, value in values.items()
                   if saved.get(section, {}).get(key) != value]
        if changed:
            raise ConfigError(f"tune.output_dir: {out} holds a sweep run with other settings ({', '.join(changed)} "
                              f"differ); choose another tune.output_dir or delete it")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(current, sort_keys=False))
