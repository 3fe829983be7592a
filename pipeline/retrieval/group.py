"""The retrieval group: S shards x R replicas of `RetrievalActor`, each a named, detached Ray actor.

Actors are named `{group}.shard{s}.replica{r}` in one namespace, so any process
of the cluster (driver, Train worker, Tune trial, a later job) finds them by
name, and they outlive the job that started them until `stop_retrieval_group`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from pipeline.config import RetrievalConfig, check_section
from pipeline.errors import RetrievalError, unwrap_pipeline_error
from pipeline.index.manifest import read_manifest
from pipeline.retrieval.search import SearchParams
from pipeline.retrieval.shard import ShardSearcher

_NAME = re.compile(r"^(?P<group>.+)\.shard(?P<shard>\d+)\.replica(?P<replica>\d+)$")


def actor_name(group: str, shard: int, replica: int) -> str:
    return f"{group}.shard{shard}.replica{replica}"


@ray.remote
class RetrievalActor:
    """Serves one shard of an index directory. Restarted by Ray if its process dies (max_restarts).

    With `coalesce_window_ms` > 0, concurrent calls go through one `Coalescer` (searched as one batch per
    window); with 0, each call searches on its own Ray thread, side by side with the others.
    """

    def __init__(self, index_dir: str, shard: int, replica: int, cfg: dict):
        from pipeline.retrieval.coalesce import Coalescer

        started = time.perf_counter()
        cfg = RetrievalConfig(**cfg)
        self.searcher = ShardSearcher(index_dir, shard, cfg.faiss_threads, SearchParams.from_config(cfg))
        self.replica = replica
        self.calls = 0
        self.window_ms = cfg.coalesce_window_ms
        self.coalescer = Coalescer(self.searcher.search, self.window_ms / 1e3) if self.window_ms > 0 else None
        self._paused_until = 0.0
        self.load_s = time.perf_counter() - started

    def search(self, queries, k: int):
        """RetrievalResult for float32[B, d] `queries`: this shard's top-min(k, shard size) passages."""
        self.calls += 1
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        # Checked here, in the caller's own thread: a bad call fails alone instead of failing a whole batch.
        queries = self.searcher.check_queries(queries)
        if k < 1:
            raise RetrievalError(f"k={k}; at least 1 passage per question")
        if self.coalescer is None:
            return self.searcher.search(queries, k)
        return self.coalescer.search(queries, k)

    def pause_for(self, seconds: float) -> None:
        """TEST/DEBUG FACILITY, not for production use: calls arriving in the next `seconds` hang until then,
        as a replica stuck in a long GC pause or on a swapping node would (used to test the client's timeout
        and failover)."""
        self._paused_until = time.monotonic() + seconds

    def describe(self) -> dict:
        """Where this actor runs, what it serves and how (for status, clients and tests)."""
        import psutil

        manifest, searcher = self.searcher.manifest, self.searcher
        return {
            "index_dir": str(searcher.index_dir), "shard": searcher.shard, "replica": self.replica,
            "num_shards": manifest.num_shards, "count": manifest.count, "dimension": manifest.dimension,
            "shard_size": searcher.end - searcher.start, "factory": manifest.factory,
            "search": searcher.settings(), "coalesce_window_ms": self.window_ms,
            "searches": self.coalescer.searches if self.coalescer else self.calls,
            "largest_batch": self.coalescer.largest_batch if self.coalescer else 1,
            "fallback_rows": searcher.fallback_rows,
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(), "calls": self.calls,
            "load_s": round(self.load_s, 3), "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        }


@dataclass
class GroupMember:
    shard: int
    replica: int
    name: str


def list_members(group: str, namespace: str) -> list[GroupMember]:
    """Named actors of `group` in `namespace` that Ray knows about (alive or restarting)."""
    members = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != namespace:
            continue
        match = _NAME.match(entry["name"])
        if match and match["group"] == group:
            members.append(GroupMember(int(match["shard"]), int(match["replica"]), entry["name"]))
    return sorted(members, key=lambda m: (m.shard, m.replica))


def start_retrieval_group(index_dir: str, cfg: RetrievalConfig, ready_timeout_s: float = 600.0) -> list[dict]:
    """Start (or reuse, if already running on the same index) the group `cfg.group`; returns member descriptions.

    Needs a connected Ray. Blocks until every actor has loaded its shard.
    """
    check_section(cfg, "retrieval")
    index_dir = str(Path(index_dir).resolve())
    manifest = read_manifest(index_dir)
    existing = list_members(cfg.group, cfg.namespace)
    if existing:
        first = _describe(ray.get_actor(existing[0].name, namespace=cfg.namespace), cfg.call_timeout_s)
        if first["index_dir"] != index_dir:
            raise RetrievalError(
                f"retrieval group {cfg.group!r} already serves {first['index_dir']}, not {index_dir}; "
                f"stop it first (jobs/retrieval_service.py stop --retrieval.group {cfg.group})"
            )
    handles = []
    for shard in range(manifest.num_shards):
        for replica in range(cfg.replicas):
            handles.append(RetrievalActor.options(
                name=actor_name(cfg.group, shard, replica), namespace=cfg.namespace, lifetime="detached",
                get_if_exists=True, max_restarts=-1, max_concurrency=cfg.max_concurrency,
                num_cpus=cfg.actor_num_cpus, resources=dict(cfg.actor_resources),
                runtime_env={"env_vars": {str(key): str(value) for key, value in cfg.actor_env.items()}},
            ).remote(index_dir, shard, replica, dataclasses.asdict(cfg)))
    try:
        return ray.get([h.describe.remote() for h in handles], timeout=ready_timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise RetrievalError(
            f"retrieval group {cfg.group!r}: actors not ready after {ready_timeout_s:.0f}s; does the cluster have "
            f"{cfg.actor_num_cpus} CPU and resources {cfg.actor_resources} free for each?"
        ) from None
    except ray.exceptions.RayError as e:
        raise unwrap_pipeline_error(e) from None


def _describe(handle, timeout_s: float) -> dict:
    return ray.get(handle.describe.remote(), timeout=timeout_s)


def group_status(group: str, namespace: str, timeout_s: float = 10.0) -> list[dict]:
    """One description per member; an unreachable member is reported with its error instead."""
    rows = []
    for member in list_members(group, namespace):
        try:
            rows.append(_describe(ray.get_actor(member.name, namespace=namespace), timeout_s))
        except (ray.exceptions.RayError, ValueError) as e:
            rows.append({"shard": member.shard, "replica": member.replica,
                         "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
    return rows


def stop_retrieval_group(group: str, namespace: str) -> int:
    """Kill every member of the group (no restart); returns how many were stopped."""
    members = list_members(group, namespace)
    for member in members:
        try:
            ray.kill(ray.get_actor(member.name, namespace=namespace), no_restart=True)
        except ValueError:
            pass  # already gone between listing and killing
    deadline = time.monotonic() + 30
    while list_members(group, namespace) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(members)
