"""The caller's side of the retrieval group: one replica of every shard per call, results merged by score.

Each client starts its replica rotation at a different offset (its rank, or a
random one), so concurrent trainers spread over replicas instead of all
queueing on replica 0. A replica that fails or times out is skipped for the
next one of the same shard; only when every replica of a shard fails does the
call raise, after at most replicas x timeout seconds.

Every call names one index version, so all its shards answer from the same one. The client follows the
group: it looks at the group record (which version the group serves) at most every `version_check_s`
between calls, and when a replica no longer holds the version asked for (dropped after a roll-forward) it
moves to the served version and asks again; that call is then answered wholly by the new version.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import numpy as np
import ray

from pipeline.errors import RetrievalError, unwrap_pipeline_error
from pipeline.retrieval.group import VersionUnavailable
from pipeline.retrieval.group_record import list_members, read_group_record
from pipeline.retrieval.result import RetrievalResult, merge_results

_VERSION_ATTEMPTS = 20
# A replica that failed a call is asked last for this long: on a lost node it stays unreachable until Ray has
# rescheduled it, and asking it first would cost every other call a full call_timeout_s.
_FAILED_REPLICA_REST_S = 30.0


def _cause(error: ray.exceptions.RayTaskError) -> BaseException:
    """The exception an actor raised: VersionUnavailable as itself (the client handles it), else unwrapped."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, VersionUnavailable) else unwrap_pipeline_error(error)


class ShardUnavailable(RetrievalError):
    """Every replica of a shard failed one call (dead, gone or timed out); pipeline/retrieval/recovery.py tells a
    lost group from a slow one."""


_FAILOVER_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError)


class RetrievalClient:
    """Connects by name to a running retrieval group; `retrieve` keeps the retrieval call contract
    (docs/architecture.md)."""

    def __init__(self, group: str, namespace: str, timeout_s: float = 60.0, offset: int | None = None,
                 version_check_s: float = 1.0):
        members = list_members(group, namespace)
        if not members:
            raise RetrievalError(
                f"retrieval group {group!r} not found in namespace {namespace!r}; "
                f"start it with jobs/retrieval_service.py start (or jobs/finetune.py starts it)"
            )
        by_shard = defaultdict(list)
        for m in members:
            by_shard[m.shard].append(ray.get_actor(m.name, namespace=namespace))
        self.num_shards = max(by_shard) + 1
        missing = [s for s in range(self.num_shards) if s not in by_shard]
        if missing:
            raise RetrievalError(f"retrieval group {group!r}: no actor for shard {missing[0]}")
        self.replicas = [by_shard[s] for s in range(self.num_shards)]
        self.group, self.namespace, self.timeout_s = group, namespace, timeout_s
        self.version_check_s = version_check_s
        self._turn = random.randrange(1 << 16) if offset is None else offset
        info = self._call_shard(0, lambda h: h.describe.remote())
        self.dimension, self.count = info["dimension"], info["count"]
        self.version, self._version_checked = info["index_dir"], time.monotonic()
        self.version_changes = 0  # how often calls moved to a newer version
        self._resting: dict[tuple[int, int], float] = {}  # (shard, replica) -> until (time.monotonic)

    def retrieve(self, vectors: np.ndarray, k: int) -> RetrievalResult:
        """Top-k passages for float32[B, d] question vectors, merged over all shards."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise RetrievalError(
                f"question vectors have shape {vectors.shape}; group {self.group!r} serves dimension {self.dimension}"
            )
        if not 1 <= k <= self.count:
            raise RetrievalError(f"k={k} but group {self.group!r} holds {self.count} passages")
        self._follow_group(force=False)
        # One put shared by all shards: the array crosses into the object store once, not once per shard.
        ref = ray.put(vectors) if self.num_shards > 1 else vectors
        for attempt in range(_VERSION_ATTEMPTS):
            version = self.version
            pending = {s: self._submit(s, self._choose(s), ref, k) for s in range(self.num_shards)}
            try:
                parts = [self._finish(s, pending[s], ref, k) for s in range(self.num_shards)]
                break
            except VersionUnavailable:
                # The version asked for is gone from a replica: move to the one the group serves now and ask
                # again; a replica still loading it (restarted mid roll-forward) gets a moment.
                if not self._follow_group(force=True) or self.version == version:
                    time.sleep(0.05 * (attempt + 1))
        else:
            raise RetrievalError(f"retrieval group {self.group!r}: no consistent index version after "
                                 f"{_VERSION_ATTEMPTS} attempts (serving {self.version})")
        self._turn += 1
        result = merge_results(parts, k)
        return result

    def _follow_group(self, force: bool) -> bool:
        """Take the version the group record names (at most every version_check_s unless `force`); returns
        whether the version changed."""
        if not force and time.monotonic() - self._version_checked < self.version_check_s:
            return False
        self._version_checked = time.monotonic()
        record = read_group_record(self.group, self.namespace)
        if not record or record["active"] == self.version:
            return False
        self.version = record["active"]
        self.version_changes += 1
        return True

    def _choose(self, shard: int) -> int:
        """This call's replica of `shard`: the rotation's, or the next one that has not failed lately."""
        count, now = len(self.replicas[shard]), time.monotonic()
        first = (self._turn + shard) % count
        for step in range(count):
            replica = (first + step) % count
            if self._resting.get((shard, replica), 0.0) <= now:
                return replica
        return first

    def _submit(self, shard: int, replica: int, ref, k: int):
        return replica, self.replicas[shard][replica].search.remote(ref, k, self.version)

    def _finish(self, shard: int, attempt, ref, k: int) -> RetrievalResult:
        replica, future = attempt
        replicas = self.replicas[shard]
        errors = []
        for tried in range(len(replicas)):
            try:
                return ray.get(future, timeout=self.timeout_s)
            except _FAILOVER_ERRORS as e:
                errors.append(f"replica {replica}: {type(e).__name__}")
                self._resting[(shard, replica)] = time.monotonic() + _FAILED_REPLICA_REST_S
                if tried + 1 < len(replicas):
                    replica = (replica + 1) % len(replicas)
                    future = replicas[replica].search.remote(ref, k, self.version)
            except ray.exceptions.RayTaskError as e:
                raise _cause(e) from None
        raise ShardUnavailable(
            f"retrieval group {self.group!r}: every replica of shard {shard} failed ({'; '.join(errors)})"
        )

    def _call_shard(self, shard: int, call):
        errors = []
        for replica in range(len(self.replicas[shard])):
            try:
                return ray.get(call(self.replicas[shard][replica]), timeout=self.timeout_s)
            except _FAILOVER_ERRORS as e:
                errors.append(f"replica {replica}: {type(e).__name__}")
        raise RetrievalError(
            f"retrieval group {self.group!r}: no replica of shard {shard} answers ({'; '.join(errors)})"
        )


def open_group_client(index_dir: str, cfg, rank: int) -> RetrievalClient:
    """Retrieval mode `ray` (pipeline/retrieval/modes.py): a client of the running group `cfg.group`. The driver
    started the group on `index_dir`; `rank` offsets the replica rotation, so concurrent trainers start on
    different replicas instead of all on replica 0."""
    return RetrievalClient(cfg.group, cfg.namespace, timeout_s=cfg.call_timeout_s, offset=rank,
                           version_check_s=cfg.version_check_s)
