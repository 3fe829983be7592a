"""Who belongs to a retrieval group and which index version it serves: the names of its actors and the group
record. The actor (group.py), the roll-forward (rollout.py) and the callers (client.py) all read these, so they
live apart from all three.

Members are the named actors `{group}.shard{s}.replica{r}` of one namespace. The group record lives in Ray's
internal key-value store (in the GCS, so it lives as long as the cluster, like the detached actors it
describes): {"active": version directory, "held": [version directories]}. Directories, not names, because a
group may move between locations (a Tune trial starts on the shared index and refreshes into its own location).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.experimental.internal_kv import (
    _internal_kv_del,
    _internal_kv_get,
    _internal_kv_list,
    _internal_kv_put,
)

from pipeline.index.versions import IndexVersion, remove_versions, resolve_version

_KV_NAMESPACE = "rag-retrieval-groups"
_NAME = re.compile(r"^(?P<group>.+)\.shard(?P<shard>\d+)\.replica(?P<replica>\d+)$")


def actor_name(group: str, shard: int, replica: int) -> str:
    return f"{group}.shard{shard}.replica{replica}"


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


def _key(group: str, namespace: str) -> bytes:
    return f"{namespace}/{group}".encode()


def write_group_record(group: str, namespace: str, active: IndexVersion, held: list[IndexVersion]) -> None:
    """Record which version the group serves (and which it still holds) for restarts and pruning."""
    record = {"active": str(active.directory),
              "held": sorted({str(v.directory) for v in held} | {str(active.directory)})}
    _internal_kv_put(_key(group, namespace), json.dumps(record).encode(), overwrite=True, namespace=_KV_NAMESPACE)


def read_group_record(group: str, namespace: str) -> dict | None:
    raw = _internal_kv_get(_key(group, namespace), namespace=_KV_NAMESPACE)
    return json.loads(raw) if raw else None


def served_version(group: str, namespace: str) -> IndexVersion | None:
    """The version the group serves, from its record (None if the group has none)."""
    record = read_group_record(group, namespace)
    return resolve_version(record["active"]) if record else None


def delete_group_record(group: str, namespace: str) -> None:
    _internal_kv_del(_key(group, namespace), namespace=_KV_NAMESPACE)


def versions_in_use(location: str | Path) -> set[str]:
    """Names of the versions of `location` that any retrieval group of this cluster holds."""
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
