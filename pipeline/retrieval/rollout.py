"""Rolling a retrieval group forward to a new index version while callers keep calling it.

    roll_group_forward(group, namespace, version)
      1. each replica loads the new version beside the one it serves, one replica at a time (the rest serve)
      2. the group record names the new version, so an actor that Ray restarts from now on loads it
      3. each replica makes it active: a caller's next call is answered by it (a call in flight finishes on the
         version it asked for: every call is answered wholly by one version, across all shards)
      4. replicas drop all but the new and the previous version; versions no group holds leave the disk

The group record lives in Ray's internal key-value store (in the GCS, so it lives as long as the cluster, like
the detached actors it describes): {"active": version directory, "held": [version directories]}. Directories,
not names, because a group may move between locations (a Tune trial starts on the shared index and refreshes
into its own location). Nothing here imports torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from pipeline.errors import RetrievalError
from pipeline.index.versions import IndexVersion, remove_versions, resolve_version

_KV_NAMESPACE = "rag-retrieval-groups"


def _key(group: str, namespace: str) -> bytes:
    return f"{namespace}/{group}".encode()


def write_group_record(group: str, namespace: str, active: IndexVersion, held: list[IndexVersion]) -> None:
    """Record which version the group serves (and which it still holds) for restarts and pruning."""
    from ray.experimental.internal_kv import _internal_kv_put

    record = {"active": str(active.directory),
              "held": sorted({str(v.directory) for v in held} | {str(active.directory)})}
    _internal_kv_put(_key(group, namespace), json.dumps(record).encode(), overwrite=True, namespace=_KV_NAMESPACE)


def served_version(group: str, namespace: str) -> IndexVersion | None:
    """The version the group serves, from its record (None if the group has none)."""
    record = read_group_record(group, namespace)
    return resolve_version(record["active"]) if record else None


def read_group_record(group: str, namespace: str) -> dict | None:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(_key(group, namespace), namespace=_KV_NAMESPACE)
    return json.loads(raw) if raw else None


def delete_group_record(group: str, namespace: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(_key(group, namespace), namespace=_KV_NAMESPACE)


def versions_in_use(location: str | Path) -> set[str]:
    """Names of the versions of `location` that any retrieval group of this cluster holds."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

    location = Path(location).resolve()
    held = set()
    for key in _internal_kv_list(b"", namespace=_KV_NAMESPACE):
        raw = _internal_kv_get(key, namespace=_KV_NAMESPACE)
        for directory in (json.loads(raw) if raw else {}).get("held", []):
            if Path(directory).parent == location:
                held.add(Path(directory).name)
    return held


def prune_unused_versions(location: str | Path) -> list[str]:
    """Remove the versions of `location` that are not CURRENT and that no group holds; returns their names."""
    return remove_versions(location, keep=versions_in_use(location))


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
    from pipeline.retrieval.group import list_members

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
