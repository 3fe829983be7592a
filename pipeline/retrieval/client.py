"""The caller's side of the retrieval group: one replica of every shard per call, results merged by score.

Each client starts its replica rotation at a different offset (its rank, or a
random one), so concurrent trainers spread over replicas instead of all
queueing on replica 0. A replica that fails or times out is skipped for the
next one of the same shard; only when every replica of a shard fails does the
call raise, after at most replicas x timeout seconds.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import numpy as np
import ray

from pipeline.errors import RetrievalError, unwrap_pipeline_error
from pipeline.retrieval.group import list_members
from pipeline.retrieval.result import RetrievalResult, merge_results

_FAILOVER_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError)


class RetrievalClient:
    """Connects by name to a running retrieval group; `retrieve` follows the DESIGN.md call contract."""

    def __init__(self, group: str, namespace: str, timeout_s: float = 60.0, offset: int | None = None):
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
        self.group, self.timeout_s = group, timeout_s
        self._turn = random.randrange(1 << 16) if offset is None else offset
        info = self._call_shard(0, lambda h: h.describe.remote())
        self.dimension, self.count = info["dimension"], info["count"]
        self.last_call_s = 0.0

    def retrieve(self, vectors: np.ndarray, k: int) -> RetrievalResult:
        """Top-k passages for float32[B, d] question vectors, merged over all shards."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise RetrievalError(
                f"question vectors have shape {vectors.shape}; group {self.group!r} serves dimension {self.dimension}"
            )
        if not 1 <= k <= self.count:
            raise RetrievalError(f"k={k} but group {self.group!r} holds {self.count} passages")
        started = time.perf_counter()
        # One put shared by all shards: the array crosses into the object store once, not once per shard.
        ref = ray.put(vectors) if self.num_shards > 1 else vectors
        pending = {s: self._submit(s, self._choose(s), ref, k) for s in range(self.num_shards)}
        parts = [self._finish(s, pending[s], ref, k) for s in range(self.num_shards)]
        self._turn += 1
        result = merge_results(parts, k)
        self.last_call_s = time.perf_counter() - started
        return result

    def _choose(self, shard: int) -> int:
        return (self._turn + shard) % len(self.replicas[shard])

    def _submit(self, shard: int, replica: int, ref, k: int):
        return replica, self.replicas[shard][replica].search.remote(ref, k)

    def _finish(self, shard: int, attempt, ref, k: int) -> RetrievalResult:
        replica, future = attempt
        replicas = self.replicas[shard]
        errors = []
        for tried in range(len(replicas)):
            try:
                return ray.get(future, timeout=self.timeout_s)
            except _FAILOVER_ERRORS as e:
                errors.append(f"replica {replica}: {type(e).__name__}")
                if tried + 1 < len(replicas):
                    replica = (replica + 1) % len(replicas)
                    future = replicas[replica].search.remote(ref, k)
            except ray.exceptions.RayTaskError as e:
                raise unwrap_pipeline_error(e) from None
        raise RetrievalError(
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
