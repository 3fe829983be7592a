"""Connecting a job to Ray: the cluster of `ray job submit` (RAY_ADDRESS), a running local one, or a new one."""

from __future__ import annotations

import os
from pathlib import Path

import ray

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def connect_ray(num_cpus: int | None = None) -> None:
    """`ray.init()` as Ray means it: joins RAY_ADDRESS when set (ray job submit), else starts a local cluster.

    A no-op when already connected. A new local cluster starts with its dashboard: Ray Train's placement
    group cleaner asks the dashboard's state API whether a run's controller is alive, and without it
    warns every few seconds and cannot free the CPUs of a stopped run (a Tune trial stopped early).
    """
    if ray.is_initialized():
        return
    from ray.data import DataContext

    # The jobs print their own progress lines; Ray Data's live bars, relayed from several processes
    # (the training split runs in a coordinator actor), would interleave with them unreadably.
    DataContext.get_current().enable_progress_bars = False
    kwargs = {"log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        # Workers of a new local cluster must import `pipeline` even from a checkout that is not pip-installed.
        python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        # Ray's CPUs are scheduling slots, not cores: the demo's trainers, retrieval actor and Ray Data tasks
        # need more slots than a laptop has cores, and they do share the cores well (each uses one thread).
        num_cpus = num_cpus or max(4, os.cpu_count() or 1)
        kwargs.update(include_dashboard=True, num_cpus=num_cpus,
                      runtime_env={"env_vars": {"PYTHONPATH": python_path}})
    ray.init(**kwargs)
