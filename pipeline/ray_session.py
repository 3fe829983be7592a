"""Connecting a job to Ray: the cluster of `ray job submit` (RAY_ADDRESS), a running local one, or a new one."""

from __future__ import annotations

import os
from pathlib import Path

import ray

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def connect_ray(num_cpus: int | None = None) -> None:
    """`ray.init()` as Ray means it: joins RAY_ADDRESS when set (ray job submit), else starts a local cluster.

    Quiet by default (no dashboard on a laptop); a no-op when already connected.
    """
    if ray.is_initialized():
        return
    kwargs = {"log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        # Workers of a new local cluster must import `pipeline` even from a checkout that is not pip-installed.
        python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        # Ray's CPUs are scheduling slots, not cores: the demo's trainers, retrieval actor and Ray Data tasks
        # need more slots than a laptop has cores, and they do share the cores well (each uses one thread).
        num_cpus = num_cpus or max(4, os.cpu_count() or 1)
        kwargs.update(include_dashboard=False, num_cpus=num_cpus,
                      runtime_env={"env_vars": {"PYTHONPATH": python_path}})
    ray.init(**kwargs)
