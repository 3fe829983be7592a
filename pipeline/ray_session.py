"""Connecting a job to Ray: the cluster of `ray job submit` (RAY_ADDRESS), a running local one, or a new one."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import ray
from ray._common.utils import get_ray_address_file
from ray._private import services

from pipeline.errors import ClusterError
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


@dataclass(frozen=True)
class RaySession:
    """The cluster a job is connected to."""

    address: str  # its GCS address (host:port), or RAY_ADDRESS as given
    joined: bool  # an existing cluster (outlives the job); False: started for this job, gone when it exits


NO_CLUSTER_HINT = "start one with `ray start --head`, or set RAY_ADDRESS"


def where_ray_looks() -> str:
    """Where `ray.init()` looks for a running cluster, for messages that say none was found."""
    return f"RAY_ADDRESS is unset and {get_ray_address_file(None)} names no running cluster"


def running_cluster_address() -> str | None:
    """The cluster `ray.init()` would join, or None where it would start a new one.

    As `ray.init()` (services.get_ray_address_from_environment): RAY_ADDRESS if set, else the GCS address that
    the last `ray start` on this node wrote to <ray temp dir>/ray_current_cluster. That file outlives a head
    stopped without `ray stop` (a killed `ray start --block`), so an address no raylet on this node uses any more
    counts as none: `ray.init()` would fail to connect to it instead of starting a cluster.
    """
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    recorded = services.find_bootstrap_address(None)
    if not recorded:
        return None
    return recorded if recorded in services.find_gcs_addresses() else None


def connect_ray(num_cpus: int | None = None, start: bool = True) -> RaySession | None:
    """`ray.init()` as Ray means it: joins RAY_ADDRESS or the local cluster `ray start` left running (as
    `ray.init()` finds it), else starts a local cluster for this job (None instead when `start` is False).

    A process already connected (a test session, a job called in-process) counts as joined: its cluster is not
    this job's to end. Output follows `pipeline/output.py`: quiet unless the job got --verbose.
    A new local cluster starts with its dashboard: Ray Train's placement group cleaner asks the dashboard's
    state API whether a run's controller is alive, and without it warns every few seconds and cannot free the
    CPUs of a stopped run (a Tune trial stopped early).
    """
    if ray.is_initialized():
        return RaySession(ray.get_runtime_context().gcs_address, joined=True)
    address = running_cluster_address()
    if address is None and not start:
        return None
    from ray.data import DataContext

    # The jobs print their own progress lines; Ray Data's live bars, relayed from several processes
    # (the training split runs in a coordinator actor), would interleave with them unreadably.
    DataContext.get_current().enable_progress_bars = False
    kwargs = ray_init_kwargs()
    if os.environ.get("RAY_ADDRESS"):
        kwargs["runtime_env"] = worker_runtime_env(already_set=_submitted_job_runtime_env())
    else:
        runtime_env = worker_runtime_env()
        # Workers must import `pipeline` even from a checkout that is not pip-installed.
        python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        runtime_env["env_vars"]["PYTHONPATH"] = python_path
        kwargs["runtime_env"] = runtime_env
    if address is not None:
        # Joining: Ray refuses num_cpus/include_dashboard for a cluster that exists (its own settings hold). No
        # address argument: ray.init() finds the same one, and only a cluster it finds itself gets the token of
        # ~/.ray/auth_token (token authentication, on by default for `ray start` heads) without RAY_AUTH_MODE.
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
        print(f"[ray] joined the Ray cluster at {address}", flush=True)
        return RaySession(address, joined=True)
    # Ray's CPUs are scheduling slots, not cores: the demo's trainers, retrieval actor and Ray Data tasks
    # need more slots than a laptop has cores, and they do share the cores well (each uses one thread).
    pass_results_inline()
    # address="local": a stale ray_current_cluster must not send ray.init() to a cluster that is gone.
    ray.init(address="local", include_dashboard=True, num_cpus=num_cpus or max(4, os.cpu_count() or 1), **kwargs)
    return RaySession(ray.get_runtime_context().gcs_address, joined=False)
