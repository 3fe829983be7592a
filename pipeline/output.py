"""What a job prints: by default our own lines (what a run will do, progress with rate and ETA, the final
summary) and errors; Ray's, Ray Train's, Ray Data's, Ray Tune's and transformers' own INFO logs, progress bars
and developer warnings only with `--verbose` (every job has it; RAG_VERBOSE=1 does the same).

Everything here uses the switches the libraries provide for it: `ray.init(logging_level=..., logging_config=...)`,
`ray.train.RunConfig(logging_config=ray.train.LoggingConfig(...))`, `tune.RunConfig(verbose=...)`, transformers'
verbosity, and environment variables that Ray passes to its workers through the job's runtime_env.
Our own lines never depend on these: they are written to stdout directly (`pipeline.progress.say`), and errors
surface as the job's `error:` line.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "RAG_VERBOSE"

# Set in every Ray worker of a quiet run (and in the driver, unless the user set them already).
QUIET_ENV = {
    # transformers: weight-loading reports and "Loading weights" bars, once per model load in every worker.
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' "Saving the dataset" bars (jobs/export_hf_retriever.py)
    # Ray Data: no live bars, and its own loggers (configured apart from Ray's) without the INFO lines that
    # narrate every dataset's execution plan; its warnings stay.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_DATA_LOG_LEVEL": "WARNING",
}
SETUP_HOOK = "pipeline.output.quiet_worker"  # runtime_env worker_process_setup_hook of a quiet run

# Loggers whose WARNINGs are notices, not problems: token auth being on, progress bars being off (we turn
# them off ourselves).
_NOTICE_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress")


def is_verbose() -> bool:
    """Whether this process was asked for the libraries' own output (`--verbose` or RAG_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _quiet_this_process() -> None:
    # Library deprecation notices (torch, transformers, Ray's own use of deprecated Ray APIs) are for the
    # developers of those libraries and of this package, not for its users. Inserted in front of Ray's own
    # filter, which shows RayDeprecationWarning once per module.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in _NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # already configured if ray.data was imported
    if "transformers" in sys.modules:  # else its import reads the variables of QUIET_ENV
        import transformers.utils.logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def quiet_worker() -> None:
    """Ray's `worker_process_setup_hook` of a quiet run: what environment variables cannot set in a worker."""
    import ray

    _quiet_this_process()
    # Ray Train logs "Reporting training result ..." (every report of every worker) at INFO through a logger
    # named by its file path, not under `ray.train`, so Train's log level (`train_logging_config`) misses it.
    report_logger = os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "execution", "context.py")
    logging.getLogger(report_logger).setLevel(logging.WARNING)


def configure_output(verbose: bool) -> None:
    """Apply the output level to this (driver) process; called once by `parse_config` for `--verbose`.

    The choice is recorded in RAG_VERBOSE so that `connect_ray` and the Train/Tune settings below follow it.
    """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    if is_verbose():  # RAG_VERBOSE=1 set by the user
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    _quiet_this_process()


def worker_runtime_env(already_set: dict | None = None) -> dict:
    """The runtime_env entries for Ray workers: QUIET_ENV and the setup hook, or RAG_VERBOSE=1 when verbose (so
    a Tune trial's own TorchTrainer follows it too). Leaves out the variables and keys in `already_set` (a
    submitted job's runtime_env: Ray refuses to merge two values of one key, and the user's value wins)."""
    already_set = already_set or {}
    env = {VERBOSE_ENV: "1"} if is_verbose() else QUIET_ENV
    runtime_env = {"env_vars": {k: v for k, v in env.items() if k not in (already_set.get("env_vars") or {})}}
    if not is_verbose() and "worker_process_setup_hook" not in already_set:
        runtime_env["worker_process_setup_hook"] = SETUP_HOOK
    return runtime_env


def ray_init_kwargs() -> dict:
    """Logging arguments of `ray.init`: when quiet, Ray's own loggers at WARNING in the driver and in every worker
    (a job LoggingConfig also drops the "(Actor pid=...)" prefix of the worker lines Ray relays; verbose runs
    keep Ray's defaults). Worker stdout still reaches the driver: the training workers' progress lines go that way.
    """
    import ray

    if is_verbose():
        return {"log_to_driver": True}
    return {"log_to_driver": True, "logging_level": logging.WARNING,
            "logging_config": ray.LoggingConfig(log_level="WARNING")}


def train_logging_config():
    """`ray.train.RunConfig(logging_config=...)`: Ray Train's console logs (worker group start, process group,
    DDP wrapping, checkpoints: several lines per run and report) at WARNING when quiet."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if is_verbose() else "WARNING")


def tune_verbosity() -> int | None:
    """`tune.RunConfig(verbose=...)`: 0 when quiet (the sweep prints its own trial table at the end), else Tune's
    default (None: status tables while it runs)."""
    return None if is_verbose() else 0
