"""Connecting a job to Ray: the cluster of `ray job submit` (RAY_ADDRESS), a running local one, or a new one."""

from __future__ import annotations

import os

import ray


def connect_ray(num_cpus: int | None = None) -> None:
    """`ray.init()` as Ray means it: joins RAY_ADDRESS when set (ray job submit), else starts a local cluster.

    Quiet by default (no dashboard on a laptop); a no-op when already connected.
    """
    if ray.is_initialized():
        return
    kwargs = {"log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    ray.init(**kwargs)
