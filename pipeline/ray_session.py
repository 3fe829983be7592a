"""Connecting a job to Ray: the cluster of `ray job submit` (RAY_ADDRESS), a running local one, or a new one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ray

from pipeline.output import ray_init_kwargs, worker_runtime_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]

INLINE_RESULT_BYTES_ENV = "RAY_max_direct_call_object_size"
INLINE_RESULT_BYTES = 1 << 20


def pass_results_inline() -> None:
    """Let the local cluster started next pass results up to 1 MiB inline (call before `ray.init` starts it).

    Ray passes results up to `max_direct_call_object_size` (100 KiB by default) inline with the reply and puts
    larger ones in the object store, which costs a put and a fetch on every call. One retrieval result for
    8 questions x 5 passages of 768-d vectors is 127 KB, so every call took that path. Raised for the clusters
    this project starts (and in cluster.yaml); a value set in the environment wins. The cluster's processes
    read it from the environment they inherit.
    """
    os.environ.setdefault(INLINE_RESULT_BYTES_ENV, str(INLINE_RESULT_BYTES))


def _submitted_job_runtime_env() -> dict:
    """The runtime_env `ray job submit` gave this driver ({} outside a submitted job)."""
    from ray._private.runtime_env.constants import (
        RAY_JOB_CONFIG_JSON_ENV_VAR,  # where ray.init reads it too
    )

    job_config = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}")
    return job_config.get("runtime_env") or {}


def connect_ray(num_cpus: int | None = None) -> None:
    """`ray.init()` as Ray means it: joins RAY_ADDRESS when set (ray job submit), else starts a local cluster.

    A no-op when already connected. Output follows `pipeline/output.py`: quiet unless the job got --verbose.
    A new local cluster starts with its dashboard: Ray Train's placement group cleaner asks the dashboard's
    state API whether a run's controller is alive, and without it warns every few seconds and cannot free the
    CPUs of a stopped run (a Tune trial stopped early).
    """
    if ray.is_initialized():
        return
    from ray.data import DataContext

    # The jobs print their own progress lines; Ray Data's live bars, relayed from several processes
    # (the training split runs in a coordinator actor), would interleave with them unreadably.
    DataContext.get_current().enable_progress_bars = False
    kwargs = ray_init_kwargs()
    if os.environ.get("RAY_ADDRESS"):
        kwargs["runtime_env"] = worker_runtime_env(already_set=_submitted_job_runtime_env())
    else:
        runtime_env = worker_runtime_env()
        # Workers of a new local cluster must import `pipeline` even from a checkout that is not pip-installed.
        python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        runtime_env["env_vars"]["PYTHONPATH"] = python_path
        # Ray's CPUs are scheduling slots, not cores: the demo's trainers, retrieval actor and Ray Data tasks
        # need more slots than a laptop has cores, and they do share the cores well (each uses one thread).
        pass_results_inline()
        kwargs.update(include_dashboard=True, num_cpus=num_cpus or max(4, os.cpu_count() or 1),
                      runtime_env=runtime_env)
    ray.init(**kwargs)
