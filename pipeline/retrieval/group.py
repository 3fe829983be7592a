"""The retrieval group: S shards x R replicas of `RetrievalActor`, each a named, detached Ray actor.

Actors are named `{group}.shard{s}.replica{r}` in one namespace, so any process
of the cluster (driver, Train worker, Tune trial, a later job) finds them by
name, and they outlive the job that started them until `stop_retrieval_group`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import psutil
import ray

from pipeline.config import RetrievalConfig
from pipeline.errors import PipelineError, RetrievalError, unwrap_pipeline_error
from pipeline.index.manifest import read_manifest
from pipeline.index.search import SearchParams
from pipeline.index.versions import resolve_version
from pipeline.options import check_section
from pipeline.retrieval.coalesce import Coalescer
from pipeline.retrieval.group_record import (
    actor_name,
    delete_group_record,
    list_members,
    served_version,
    write_group_record,
)
from pipeline.retrieval.placement import (
    group_placements,
    remove_placements,
    replica_bundle,
    replica_strategy,
    shard_placement,
    shard_strategy,
)
from pipeline.retrieval.rollout import roll_group_forward
from pipeline.retrieval.shard import ShardSearcher


class VersionUnavailable(RetrievalError):
    """A call named an index version this replica does not hold (dropped after a roll-forward, or not loaded
    yet after a restart); the client moves to the version the group serves and asks again."""


@ray.remote
class RetrievalActor:
    """Serves one shard of an index version. Restarted by Ray if its process dies (max_restarts).

    It can hold more than one version of the shard: during a roll-forward (pipeline/retrieval/rollout.py) it
    loads the new one beside the active one, then switches, and keeps the previous one for calls that still
    ask for it. A call names the version it wants (or takes the active one), so every shard of one call answers
    from the same version. With `coalesce_window_ms` > 0, concurrent calls go through one `Coalescer`
    (searched as one batch per window); with 0, each call searches on its own Ray thread.
    """

    def __init__(self, index_dir: str, shard: int, replica: int, cfg: dict):
        started = time.perf_counter()
        self.cfg = RetrievalConfig(**cfg)
        self.shard, self.replica = shard, replica
        # Restarted by Ray after a roll-forward, the constructor arguments name the version the group started
        # on; the group record names the one it serves now.
        serving = served_version(self.cfg.group, self.cfg.namespace)
        self.versions: dict[str, ShardSearcher] = {}
        self.active = self._load(str(serving.directory) if serving else index_dir)
        self.calls = 0
        self.window_ms = self.cfg.coalesce_window_ms
        self.coalescer = Coalescer(self.window_ms / 1e3) if self.window_ms > 0 else None
        self._paused_until = 0.0
        self.load_s = time.perf_counter() - started

    def _load(self, index_dir: str) -> str:
        """Load this shard of the version at `index_dir` (if not held yet); returns its version directory."""
        directory = str(resolve_version(index_dir).directory)
        if directory not in self.versions:
            self.versions[directory] = ShardSearcher(directory, self.shard, self.cfg.faiss_threads,
                                                     SearchParams.from_config(self.cfg), self.cfg.verify_checksums)
        return directory

    def search(self, queries, k: int, version: str | None = None):
        """RetrievalResult for float32[B, d] `queries`: this shard's top-min(k, shard size) passages, from
        `version` (a version directory; None: the active one). VersionUnavailable if it holds no such version."""
        self.calls += 1
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        searcher = self.versions.get(version or self.active)
        if searcher is None:
            raise VersionUnavailable(f"replica {self.replica} of shard {self.shard} holds no version {version}; "
                                     f"it serves {self.active}")
        # Checked here, in the caller's own thread: a bad call fails alone instead of failing a whole batch.
        queries = searcher.check_queries(queries)
        if k < 1:
            raise RetrievalError(f"k={k}; at least 1 passage per question")
        if self.coalescer is None:
            return searcher.search(queries, k)
        return self.coalescer.search(searcher.search, queries, k)

    def load_version(self, index_dir: str) -> str:
        """Load a version beside the active one (roll-forward step 1); returns its directory."""
        return self._load(index_dir)

    def activate(self, index_dir: str) -> None:
        """Serve `index_dir` to calls that name no version (loaded first if this actor lacks it)."""
        self.active = self._load(index_dir)

    def drop_versions(self, keep: list[str]) -> None:
        """Release every version but the active one and `keep` (a call in flight on one finishes first)."""
        for directory in [d for d in self.versions if d != self.active and d not in keep]:
            del self.versions[directory]

    def pause_for(self, seconds: float) -> None:
        """TEST/DEBUG FACILITY, not for production use: calls arriving in the next `seconds` hang until then,
        as a replica stuck in a long GC pause or on a swapping node would (used to test the client's timeout
        and failover)."""
        self._paused_until = time.monotonic() + seconds

    def describe(self) -> dict:
        """Where this actor runs, what it serves and how (for status, clients and tests)."""
        searcher = self.versions[self.active]
        manifest = searcher.manifest
        coalescer = self.coalescer
        return {
            "index_dir": self.active, "version": Path(self.active).name, "build_id": manifest.build_id,
            "held_versions": sorted(self.versions), "shard": self.shard, "replica": self.replica,
            "num_shards": manifest.num_shards, "count": manifest.count, "dimension": manifest.dimension,
            "shard_size": searcher.end - searcher.start, "factory": manifest.factory,
            "search": searcher.settings(), "coalesce_window_ms": self.window_ms,
            "searches": coalescer.searches if coalescer else self.calls,
            "largest_batch": coalescer.largest_batch if coalescer else 1,
            "fallback_rows": sum(s.fallback_rows for s in self.versions.values()),
            "node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(), "calls": self.calls,
            "load_s": round(self.load_s, 3), "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        }


def start_retrieval_group(index_dir: str, cfg: RetrievalConfig, ready_timeout_s: float = 600.0) -> list[dict]:
    """Start the group `cfg.group` on `index_dir` (a location: its CURRENT version; or a version directory), or
    reuse it if it runs. A running group on another version of the same location is rolled forward to it
    (`retrieval.on_new_version` roll) or refused naming both versions (refuse); on another index, refused.

    Needs a connected Ray. Blocks until every actor has loaded its shard; returns member descriptions.
    """
    check_section(cfg, "retrieval")
    version = resolve_version(index_dir)
    manifest = read_manifest(version.directory)  # every file's size, on the driver, before any actor starts
    fresh = not list_members(cfg.group, cfg.namespace)
    if not fresh:
        serving = served_version(cfg.group, cfg.namespace)
        if serving is None or serving.location != version.location:
            raise RetrievalError(
                f"retrieval group {cfg.group!r} already serves {serving.directory if serving else 'another index'}, "
                f"not {version.directory}; stop it first (jobs/retrieval_service.py stop --retrieval.group "
                f"{cfg.group})")
        if serving.directory != version.directory:
            if cfg.on_new_version == "refuse":
                raise RetrievalError(
                    f"retrieval group {cfg.group!r} serves {serving.name} of {version.location}, which now has "
                    f"{version.name}; roll it forward (retrieval.on_new_version roll) or stop it")
            rollout = roll_group_forward(cfg.group, cfg.namespace, version)
            print(f"[retrieval] group {cfg.group!r} rolled forward from {rollout.previous} to {rollout.version} "
                  f"in {rollout.swap_s:.1f}s", flush=True)
    else:
        write_group_record(cfg.group, cfg.namespace, version, [version])
    handles = []
    strategy = shard_strategy(cfg, warn=fresh)
    for shard in range(manifest.num_shards):
        # The group's own detached placement group, never a caller's (a Tune trial's): it outlives the caller.
        pg = shard_placement(cfg, shard, strategy) if replica_bundle(cfg) else None
        for replica in range(cfg.replicas):
            handles.append(RetrievalActor.options(
                name=actor_name(cfg.group, shard, replica), namespace=cfg.namespace, lifetime="detached",
                get_if_exists=True, max_restarts=-1, max_concurrency=cfg.max_concurrency,
                scheduling_strategy=replica_strategy(pg, replica),
                num_cpus=cfg.actor_num_cpus, resources=dict(cfg.actor_resources),
                runtime_env={"env_vars": {str(key): str(value) for key, value in cfg.actor_env.items()}},
            ).remote(str(version.directory), shard, replica, dataclasses.asdict(cfg)))
    try:
        return ray.get([h.describe.remote() for h in handles], timeout=ready_timeout_s)
    except ray.exceptions.GetTimeoutError:
        if fresh:  # actors and placement groups left waiting would take the nodes when they come, as half a group
            stop_retrieval_group(cfg.group, cfg.namespace)
        strict = cfg.placement == "strict"
        spread = f", on {cfg.replicas} different nodes (retrieval.placement strict)" if strict else ""
        raise RetrievalError(
            f"retrieval group {cfg.group!r}: actors not ready after {ready_timeout_s:.0f}s; does the cluster have "
            f"{cfg.actor_num_cpus} CPU and resources {cfg.actor_resources} free for each{spread}?"
        ) from None
    except ray.exceptions.RayError as e:
        # A replica's constructor raised (a damaged shard file, ...): Ray does not restart an actor whose
        # constructor raised, and the replicas that did load must not stay behind as half a group.
        if fresh:
            stop_retrieval_group(cfg.group, cfg.namespace)
        error = unwrap_pipeline_error(e)
        if isinstance(error, PipelineError):
            raise error from None
        raise RetrievalError(f"retrieval group {cfg.group!r}: a replica failed to load {version.directory} "
                             f"({str(e).strip().splitlines()[0][:200]})") from None


def _describe(handle, timeout_s: float) -> dict:
    return ray.get(handle.describe.remote(), timeout=timeout_s)


def group_status(group: str, namespace: str, timeout_s: float = 10.0) -> list[dict]:
    """One description per member; an unreachable member is reported with its error (and the state of its
    shard's placement group: RESCHEDULING while its node is lost) instead, and a replica that has a bundle but
    no actor any more (killed without restart) as gone."""
    rows, placements = [], group_placements(group, namespace)
    members = list_members(group, namespace)
    for member in members:
        try:
            rows.append(_describe(ray.get_actor(member.name, namespace=namespace), timeout_s))
        except (ray.exceptions.RayError, ValueError) as e:
            state = placements[member.shard][1]["state"] if member.shard in placements else None
            rows.append({"shard": member.shard, "replica": member.replica, "placement": state,
                         "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
    listed = {(m.shard, m.replica) for m in members}
    for shard, (_, row) in sorted(placements.items()):
        for replica in range(len(row["bundles"])):
            if (shard, replica) not in listed:
                rows.append({"shard": shard, "replica": replica, "placement": row["state"],
                             "error": "gone: no actor by its name (jobs/retrieval_service.py repair starts it)"})
    return sorted(rows, key=lambda r: (r["shard"], r["replica"]))


def repair_retrieval_group(cfg: RetrievalConfig) -> list[dict]:
    """Start again the members of the running group `cfg.group` that are gone, on the version it serves (not
    the location's CURRENT: a repair never rolls forward); returns member descriptions."""
    serving = served_version(cfg.group, cfg.namespace)
    if serving is None:
        raise RetrievalError(f"retrieval group {cfg.group!r} is not running in namespace {cfg.namespace!r}; "
                             f"nothing to repair (jobs/retrieval_service.py start starts it)")
    return start_retrieval_group(str(serving.directory), cfg)


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
    remove_placements(group, namespace)
    delete_group_record(group, namespace)
    return len(members)
