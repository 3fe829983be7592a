"""Where a retrieval group's replicas run: one detached placement group per shard, one bundle per replica.

With at least R nodes able to hold a replica (their resources fit `actor_num_cpus` and `actor_resources`), a
shard's placement group is STRICT_SPREAD: its R replicas sit on R different nodes, so losing a node loses one
replica of a shard, never the shard. Ray keeps that promise after a loss by itself: a bundle on a dead node is
rescheduled onto a node that does not hold another bundle of the same shard as soon as one fits, and the replica
Ray restarts in it (max_restarts=-1) loads the version the group record names. Until then the replica stays
RESTARTING and callers use the others. With fewer such nodes (one node: every test here) the placement group is
SPREAD, which packs what cannot spread, and one line says that replicas of a shard share a node; with
`retrieval.placement strict` it is STRICT_SPREAD anyway, and the group waits for the nodes (an autoscaler starts
them; a fixed cluster ends the wait with the start's ready timeout error).

Placement groups are detached and named `{namespace}/{group}.shard{s}`, like the actors: they outlive the job
that made them until `stop_retrieval_group` removes them. Nothing here imports torch.
"""

from __future__ import annotations

import logging

import ray
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pipeline.config import RetrievalConfig
from pipeline.errors import RetrievalError
from pipeline.progress import say

_GONE = ("REMOVED",)


class _KnownPlacementWarning(logging.Filter):
    """Ray warns, once per actor, that a restartable detached actor in a placement group dies with the group. That
    is the intent here: only `stop_retrieval_group` removes the group's placement groups, to stop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "restartable detached actor with a placement group" not in record.getMessage()


logging.getLogger("ray.actor").addFilter(_KnownPlacementWarning())


def replica_bundle(cfg: RetrievalConfig) -> dict[str, float]:
    """The resources one replica reserves (zero amounts left out: Ray refuses them in a bundle)."""
    bundle = {"CPU": float(cfg.actor_num_cpus), **{str(k): float(v) for k, v in cfg.actor_resources.items()}}
    return {key: amount for key, amount in bundle.items() if amount > 0}


def replica_nodes(cfg: RetrievalConfig) -> list[str]:
    """Ids of the alive nodes whose total resources hold one replica (where the group may run)."""
    bundle = replica_bundle(cfg)
    return sorted(node["NodeID"] for node in ray.nodes()
                  if node["Alive"] and all(node["Resources"].get(k, 0) >= v for k, v in bundle.items()))


def placement_name(group: str, namespace: str, shard: int) -> str:
    return f"{namespace}/{group}.shard{shard}"


def _find(name: str) -> tuple[PlacementGroup, dict] | None:
    for pg_id, row in placement_group_table().items():
        if row["name"] == name and row["state"] not in _GONE:
            return PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))), row
    return None


def shard_strategy(cfg: RetrievalConfig, warn: bool = True) -> str:
    """STRICT_SPREAD where the cluster has a node per replica (or `retrieval.placement strict`: an autoscaler adds
    the nodes it waits for), else SPREAD (said, with why, if `warn`)."""
    if cfg.placement == "strict":
        return "STRICT_SPREAD"
    nodes = replica_nodes(cfg)
    if cfg.replicas > 1 and len(nodes) < cfg.replicas:
        if warn:
                say(f"[retrieval] group {cfg.group!r}: {len(nodes)} node(s) offer {replica_bundle(cfg)} for "
                f"{cfg.replicas} replicas of each shard; replicas of a shard share a node (losing it loses the "
                f"shard)")
        return "SPREAD"
    return "STRICT_SPREAD"


def shard_placement(cfg: RetrievalConfig, shard: int, strategy: str) -> PlacementGroup:
    """The shard's placement group, made (detached) if the group has none; RetrievalError if the one that runs
    has another number of replicas."""
    name = placement_name(cfg.group, cfg.namespace, shard)
    found = _find(name)
    if found:
        pg, row = found
        if len(row["bundles"]) != cfg.replicas:
            raise RetrievalError(f"retrieval group {cfg.group!r} runs {len(row['bundles'])} replica(s) of shard "
                                 f"{shard}, not retrieval.replicas={cfg.replicas}; stop it first to change that")
        return pg
    try:
        return placement_group([replica_bundle(cfg)] * cfg.replicas, strategy=strategy, name=name,
                               lifetime="detached")
    except ray.exceptions.RaySystemError:
        # Made by another caller between our look and now (workers restarting a lost group at once).
        found = _find(name)
        if found is None:
            raise
        return found[0]


def replica_strategy(pg: PlacementGroup | None, replica: int):
    """The scheduling strategy of one replica: its own bundle of the shard's placement group."""
    if pg is None:
        # Nothing to reserve (0 CPUs, no resources): no bundle to hold; spread on a best-effort basis.
        return "SPREAD"
    # capture_child_tasks False: the actor's own tasks (none today) stay out of the retrieval bundles.
    return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=replica,
                                            placement_group_capture_child_tasks=False)


def group_placements(group: str, namespace: str) -> dict[int, tuple[PlacementGroup, dict]]:
    """The group's live placement groups by shard, each with its row of Ray's placement group table."""
    prefix = placement_name(group, namespace, 0)[: -len("0")]
    found = {}
    for pg_id, row in placement_group_table().items():
        if row["name"].startswith(prefix) and row["name"][len(prefix):].isdigit() and row["state"] not in _GONE:
            found[int(row["name"][len(prefix):])] = (PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))), row)
    return found


def remove_placements(group: str, namespace: str) -> int:
    """Remove the group's placement groups (their actors die with them); returns how many."""
    placements = group_placements(group, namespace)
    for pg, _ in placements.values():
        remove_placement_group(pg)
    return len(placements)
