"""The retrieval benchmark's 'training workers': gloo ranks that only retrieve, as the training step does.

A `WorkerSet` of W ranks runs one variant at a time in lock-step: per call, a barrier, then every rank
retrieves its own batch through the variant, and rank 0 reports its seconds per call. Variants:

    floor          one read pass over the shard's vectors (a matrix-vector product over the memory map)
    in_process     the rank searches its batch itself (LocalRetriever, 1 FAISS thread)
    pair:<group>   rank 0: in_process, the Ray call of the SAME batch, and Ray's transport alone, back to back:
                   the actor overhead (Ray call - in_process) and how much of it is Ray's own round trip (a call
                   to an `EchoActor` carrying the same queries and answering the same result, searching nothing)
    torch:<T>      the torch.distributed baseline, rank 0 searching every rank's batch with T threads
    ray:<group>    the Ray retrieval group `group`
"""

from __future__ import annotations

import socket
import time

import numpy as np
import ray

from pipeline.config import RetrievalConfig
from pipeline.index.manifest import open_vectors, read_manifest
from pipeline.retrieval.factory import make_retriever


@ray.remote(num_cpus=0.01, max_concurrency=16)
class EchoActor:
    """Answers every call with the result it was given: a call's round trip through Ray, without the search."""

    def __init__(self, result):
        self.result = result

    def search(self, queries, k: int, version: str | None = None):
        return self.result


@ray.remote(num_cpus=1)
class BenchmarkWorker:
    def __init__(self, rank: int, world: int, index_dir: str, batch: int, k: int, seed: int):
        self.rank, self.world, self.index_dir, self.k = rank, world, index_dir, k
        self.retrievers: dict = {}
        self.vectors = None
        self.echo = None
        rng = np.random.default_rng(seed + 1000 * rank)
        self.batches = [rng.standard_normal((batch, self._dimension()), dtype=np.float32) for _ in range(16)]
        self.step = 0

    def _dimension(self) -> int:

        return read_manifest(self.index_dir).dimension

    def rendezvous_address(self) -> str:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def join(self, address: str) -> None:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=address, rank=self.rank, world_size=self.world)

    def prepare(self, variant: str, cfg: dict) -> None:
        """Build what `variant` needs (collective for torch: every rank calls this together)."""
        kind, _, _ = variant.partition(":")
        if kind == "floor":
            self.vectors = open_vectors(self.index_dir, read_manifest(self.index_dir))
            return
        if kind in ("in_process", "pair"):
            self.retrievers.setdefault("in_process", make_retriever("local", self.index_dir, RetrievalConfig(), 0))
        if kind == "pair":
            self.echo = EchoActor.remote(self.retrievers["in_process"].retrieve(self.batches[0], self.k))
        mode = {"torch": "torch", "ray": "ray", "pair": "ray"}.get(kind)
        if mode:
            self.retrievers[variant] = make_retriever(mode, self.index_dir, RetrievalConfig(**cfg), self.rank)

    def run(self, variant: str, calls: int) -> list | None:
        """`calls` lock-step calls of `variant`; rank 0 returns seconds per call ([in_process, ray] for pairs)."""
        import torch.distributed as dist

        timings = []
        for _ in range(calls):
            queries = self.batches[self.step % len(self.batches)]
            self.step += 1
            dist.barrier()
            timings.append(self._one_call(variant, queries))
        dist.barrier()
        return timings if self.rank == 0 else None

    def _one_call(self, variant: str, queries: np.ndarray):
        kind = variant.partition(":")[0]
        if kind == "floor":
            started = time.perf_counter()
            np.dot(self.vectors, queries[0])
            return time.perf_counter() - started
        if kind == "pair":
            first = self._timed("in_process", queries)
            call = self._timed(variant, queries)
            started = time.perf_counter()
            ray.get(self.echo.search.remote(queries, self.k))
            return [first, call, time.perf_counter() - started]
        return self._timed("in_process" if kind == "in_process" else variant, queries)

    def _timed(self, name: str, queries: np.ndarray) -> float:
        started = time.perf_counter()
        result = self.retrievers[name].retrieve(queries, self.k)
        elapsed = time.perf_counter() - started
        if result.ids.shape != (len(queries), self.k):
            raise AssertionError(f"{name}: got ids of shape {result.ids.shape}")
        return elapsed

    def leave(self) -> None:
        import torch.distributed as dist

        self.retrievers.clear()
        if self.echo is not None:
            ray.kill(self.echo)
        dist.destroy_process_group()


class WorkerSet:
    """W benchmark workers joined in one gloo group (each set is its own group of processes)."""

    def __init__(self, world: int, index_dir: str, batch: int, k: int, seed: int, env: dict):
        # OpenBLAS single-threaded: the floor's read pass is one thread, like the searches it is compared with.
        options = {"runtime_env": {"env_vars": {**env, "OPENBLAS_NUM_THREADS": "1"}}}
        self.world = world
        self.workers = [BenchmarkWorker.options(**options).remote(rank, world, index_dir, batch, k, seed)
                        for rank in range(world)]
        address = ray.get(self.workers[0].rendezvous_address.remote())
        ray.get([w.join.remote(address) for w in self.workers])

    def prepare(self, variant: str, cfg: dict) -> None:
        ray.get([w.prepare.remote(variant, cfg) for w in self.workers])

    def run(self, variant: str, calls: int) -> list:
        return ray.get([w.run.remote(variant, calls) for w in self.workers])[0]

    def close(self) -> None:
        try:
            ray.get([w.leave.remote() for w in self.workers])
        finally:
            for w in self.workers:
                ray.kill(w)
