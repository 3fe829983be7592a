"""Checking a sweep's configuration before any trial starts, and turning its search space into Tune's.

    space = check_sweep_config(cfg)        # ConfigError naming the key, or {dotted key: Distribution}
    to_tune_domains(space)                 # {dotted key: tune.loguniform(...)/choice/...} for the param_space

`tune.search_space` maps training keys to one distribution each (YAML):

    train.lr: {loguniform: [3e-4, 3e-3]}       # floats, log-uniform in [low, high)
    train.warmup_steps: {randint: [0, 100]}    # integers in [low, high), like tune.randint
    model.label_smoothing: {choice: [0.0, 0.1]}
    train.weight_decay: {uniform: [0.0, 0.1]}

Every trial shares one index, one retrieval group and one tokenized train dataset, so the keys those are
built from cannot vary within a sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ray import tune

from pipeline.config import RunConfig, apply_overrides, known_keys, set_key
from pipeline.errors import ConfigError
from pipeline.retrieval.modes import MODES, retrieval_mode
from pipeline.train.checks import check_run_config
from pipeline.train.metrics import summarize

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")

# What `train_loop_per_worker` reports every epoch besides the dev metrics (`summarize_rows(prefix="dev_")`).
TRAIN_LOOP_METRICS = ("epoch", "step", "resumed_at_step", "train_loss", "epoch_s", "retrieval_failed_calls")
PROFILE_METRICS = ("retrieval_s_per_call", "retrieval_share_of_epoch")
REFRESH_METRICS = ("refreshes", "refresh_skipped", "refresh_failed", "refresh_stall_s", "refresh_final_wait_s")

# Built once for all trials: the index and retrieval group (knowledge_base, index, retrieval), the train
# dataset (data, and the tokenizers and lengths QATokenizer uses), and the sweep itself (tune).
SHARED_SECTIONS = ("knowledge_base", "index", "retrieval", "data", "tune")
SHARED_KEYS = ("refresh.location", "model.question_encoder", "model.generator", "model.max_question_length",
               "model.max_target_length", "train.output_dir", "train.resume")

# The trial function only drives its TorchTrainer (the workers reserve their own CPUs), but Tune cannot
# place a trial with no resources at all (an empty bundle is rejected): a token fraction of a CPU.
TRIAL_DRIVER_CPUS = 0.01
# Kept free of trials so Ray Data's read/tokenize tasks feeding the workers can always be scheduled.
DATA_CPUS = 1.0


@dataclass(frozen=True)
class Distribution:
    """One key's distribution: kind in DISTRIBUTIONS; values [low, high] or the choices, already of the key's type."""

    kind: str
    values: tuple

    def largest(self) -> Any:
        """The largest value a sample can take (randint's high is exclusive)."""
        if self.kind == "choice":
            return max(self.values)
        return self.values[1] - 1 if self.kind == "randint" else self.values[1]


def reported_metrics(cfg: RunConfig) -> list[str]:
    """Names of the metrics every trial reports per epoch (what tune.metric may name)."""
    names = list(TRAIN_LOOP_METRICS) + [f"dev_{key}" for key in summarize([])]
    return (names + (list(PROFILE_METRICS) if cfg.train.profile else [])
            + (list(REFRESH_METRICS) if cfg.refresh.every_steps or "refresh.every_steps" in cfg.tune.search_space
               else []))


def max_epochs(cfg: RunConfig, space: dict[str, Distribution]) -> int:
    """The most epochs a trial can run (ASHA's max_t)."""
    return int(space["train.epochs"].largest()) if "train.epochs" in space else cfg.train.epochs


def check_sweep_config(cfg: RunConfig) -> dict[str, Distribution]:
    """ConfigError (one line naming the key) for anything a sweep cannot run; else the parsed search space."""
    t = cfg.tune
    if not retrieval_mode(cfg.retrieval.mode).uses_group:
        groups = [m.name for m in MODES.values() if m.uses_group]
        raise ConfigError(f"retrieval.mode: the trials of a sweep share one retrieval group; use "
                          f"{' or '.join(map(repr, groups))}, not {cfg.retrieval.mode!r}")
    check_run_config(cfg)  # the base config first, so a bad base value is not blamed on the search space
    metrics = reported_metrics(cfg)
    if t.metric not in metrics:
        raise ConfigError(f"tune.metric: {t.metric!r} is never reported; the training loop reports "
                          f"{', '.join(metrics)}")
    space = {key: _parse_distribution(cfg, key, spec) for key, spec in t.search_space.items()}
    if t.grace_period > max_epochs(cfg, space):
        raise ConfigError(f"tune.grace_period: {t.grace_period} epochs, but trials run at most "
                          f"{max_epochs(cfg, space)} (train.epochs)")
    return space


def _parse_distribution(cfg: RunConfig, key: str, spec: Any) -> Distribution:
    where = f"tune.search_space: {key}"
    if key not in known_keys():
        raise ConfigError(f"{where}: not a training option (see `python jobs/finetune.py --help` for the keys)")
    if key.partition(".")[0] in SHARED_SECTIONS or key in SHARED_KEYS:
        raise ConfigError(f"{where}: every trial shares one index, retrieval group and train dataset, "
                          f"so this key cannot vary within a sweep")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one distribution such as {{loguniform: [1e-4, 1e-3]}} or "
                          f"{{choice: [a, b]}}, got {spec!r}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} needs a non-empty list, got {args!r}")
    if kind == "choice":
        return Distribution(kind, tuple(_checked_value(cfg, key, value, where) for value in args))
    if len(args) != 2:
        raise ConfigError(f"{where}: {kind} needs [low, high], got {args!r}")
    low, high = (_number(value, kind, where) for value in args)
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {args!r}")
    current = getattr(getattr(cfg, key.partition(".")[0]), key.partition(".")[2])
    if kind != "randint" and (isinstance(current, bool) or not isinstance(current, float)):
        hint = "; use randint or choice" if type(current) is int else ""
        raise ConfigError(f"{where}: {kind} samples floats but {key} takes {type(current).__name__}{hint}")
    # The extremes a sample can take must make a valid run (randint's high is exclusive).
    _checked_value(cfg, key, low, where)
    _checked_value(cfg, key, high - 1 if kind == "randint" else high, where)
    return Distribution(kind, (low, high))


def _number(value: Any, kind: str, where: str) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if kind == "randint":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: randint bounds must be integers, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {kind} bounds must be finite numbers, got {value!r}")
    return float(value)


def _checked_value(cfg: RunConfig, key: str, value: Any, where: str) -> Any:
    """`value` converted to the key's type, after checking that a run with it passes the run checks."""
    trial = apply_overrides(cfg, {})
    set_key(trial, key, value, where=where)
    try:
        check_run_config(trial)
    except ConfigError as e:
        raise ConfigError(f"tune.search_space: {e}") from None
    section, _, name = key.partition(".")
    return getattr(getattr(trial, section), name)


def to_tune_domains(space: dict[str, Distribution]) -> dict[str, Any]:
    """Tune search-space objects for a parsed space (keys stay dotted)."""
    make = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    return {key: tune.choice(list(d.values)) if d.kind == "choice" else make[d.kind](*d.values)
            for key, d in space.items()}


def trial_cpus(cfg: RunConfig, space: dict[str, Distribution], shards: int = 1) -> float:
    """CPUs the largest trial of the sweep reserves: its workers', its driver's token share and, for a trial that
    refreshes its index, its own retrieval group (`shards` x replicas actors) and refresh embedding actors."""
    def largest(key: str):
        section, _, name = key.partition(".")
        return space[key].largest() if key in space else getattr(getattr(cfg, section), name)

    cpus = largest("train.num_workers") * largest("train.cpus_per_worker") + TRIAL_DRIVER_CPUS
    if largest("refresh.every_steps") > 0:
        r = cfg.retrieval
        cpus += shards * r.replicas * r.actor_num_cpus + largest("refresh.embed_concurrency") * largest(
            "refresh.embed_num_cpus")
    return cpus


def concurrent_trials(cfg: RunConfig, space: dict[str, Distribution], cluster: dict[str, float],
                      reserved_cpus: float, shards: int = 1) -> int:
    """tune.max_concurrent_trials, lowered to how many trials the cluster's CPUs (and GPUs) hold at once.

    `cluster` is `ray.cluster_resources()`; `reserved_cpus` what the retrieval group holds. Never below 1.
    """
    free = cluster.get("CPU", 0.0) - reserved_cpus - DATA_CPUS
    fits = int(free // trial_cpus(cfg, space, shards))
    if cfg.train.use_gpu:
        workers = space["train.num_workers"].largest() if "train.num_workers" in space else cfg.train.num_workers
        fits = min(fits, int(cluster.get("GPU", 0.0) // workers))
    return max(1, min(cfg.tune.max_concurrent_trials, fits))
