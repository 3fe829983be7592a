"""Rolling a retrieval group forward to a new index version while callers keep calling it.

    roll_group_forward(group, namespace, version)
      1. each replica loads the new version beside the one it serves, one replica at a time (the rest serve)
      2. the group record names the new version, so an actor that Ray restarts from now on loads it
      3. each replica makes it active: a caller's next call is answered by it (a call in flight finishes on the
         version it asked for: every call is answered wholly by one version, across all shards)
      4. replicas drop all but the new and the previous version; versions no group holds leave the disk

The group record (pipeline/retrieval/group_record.py) names the served version. Nothing here imports torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray

from pipeline.errors import RetrievalError
from pipeline.index.versions import IndexVersion
from pipeline.retrieval.group_record import (
    list_members,
    prune_unused_versions,
    served_version,
    write_group_record,
)


@dataclass
class Rollout:
    """What a roll-forward did."""

    version: str
    previous: str
    replicas: int
    load_s: float  # step 1: every replica loaded the new version (one at a time)
    swap_s: float  # steps 1-4 in all
    removed: list[str]


def roll_group_forward(group: str, namespace: str, version: IndexVersion, timeout_s: float = 600.0) -> Rollout:
    """Move every replica of `group` to `version` without a moment where a call cannot be answered.

    RetrievalError naming the replica if one cannot load the version (the group keeps serving the old one then).
    """
    started = time.perf_counter()
    members = list_members(group, namespace)
    handles = [ray.get_actor(m.name, namespace=namespace) for m in members]
    if not handles:
        raise RetrievalError(f"retrieval group {group!r} not found in namespace {namespace!r}")
    previous = served_version(group, namespace)
    deadline = time.monotonic() + timeout_s
    for handle, member in zip(handles, members):
        try:
            _call_through_restarts(handle, lambda h: h.load_version.remote(str(version.directory)), deadline)
        except (ray.exceptions.RayError, ValueError) as e:
            raise RetrievalError(f"retrieval group {group!r}: replica {member.name} could not load "
                                 f"{version.directory} ({str(e).splitlines()[0][:200]}); it keeps serving "
                                 f"{previous.directory if previous else 'its version'}") from None
    load_s = time.perf_counter() - started
    keep = [version] + ([previous] if previous else [])
    write_group_record(group, namespace, version, keep)
    # From here on a replica that dies comes back on the new version (the record names it), and activate()
    # loads the version itself if a replica lacks it, so both steps are simply repeated for a replica that died.
    for handle in handles:
        _call_through_restarts(handle, lambda h: h.activate.remote(str(version.directory)), deadline)
    for handle in handles:
        _call_through_restarts(handle, lambda h: h.drop_versions.remote([str(v.directory) for v in keep]), deadline)
    removed = prune_unused_versions(version.location)
    if previous and previous.location != version.location:
        removed += prune_unused_versions(previous.location)
    return Rollout(version.name, previous.name if previous else "", len(handles), round(load_s, 3),
                   round(time.perf_counter() - started, 3), removed)


def _call_through_restarts(handle, call, deadline: float):
    """ray.get(call(handle)), asked again while the actor is dead and being restarted by Ray (the calls made here
    are idempotent), until `deadline` (time.monotonic)."""
    while True:
        try:
            return ray.get(call(handle), timeout=max(1.0, deadline - time.monotonic()))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
