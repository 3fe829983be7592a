"""Retrieval mode `torch`: the torch.distributed baseline the Ray group is measured against.

Rank 0 alone holds the index (every shard, in-process). Each call is a collective:

    all ranks  --all_gather [B_r, k]-->  everyone      (batch sizes differ per rank)
    all ranks  --gather queries------->  rank 0        (padded to max B_r)
    rank 0     searches ONCE over the concatenated batch
    rank 0     --broadcast lengths, scatter payload-->  rank r gets its rows
               (ids, scores, vectors, titles, texts: one pickled RetrievalResult per rank)

So EVERY rank must call `retrieve` the same number of times, in the same order
(like any collective); a rank that skips a call hangs the others. A rank with
no questions this step calls with a [0, d] array.

Communication runs on a gloo (CPU) group: the default group when it is gloo,
otherwise (nccl) a gloo sub-group over all ranks made at construction, so
queries and results never visit the GPU.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipeline.errors import RetrievalError
from pipeline.index.search import SearchParams
from pipeline.retrieval.local import LocalRetriever
from pipeline.retrieval.result import RetrievalResult


class TorchDistributedRetriever:
    """Same call contract as RetrievalClient; construct on every rank of an initialised process group."""

    def __init__(self, index_dir: str | Path, faiss_threads: int = 1, src: int = 0,
                 params: SearchParams = SearchParams()):
        if not dist.is_available() or not dist.is_initialized():
            raise RetrievalError("retrieval.mode 'torch' needs an initialised torch.distributed process group")
        # Collective: every rank creates the sub-group, even when only some would need it.
        self.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.src = src
        self.local = LocalRetriever(index_dir, faiss_threads, params) if self.rank == src else None
        shape = torch.tensor([self.local.dimension, self.local.count] if self.local else [0, 0], dtype=torch.int64)
        dist.broadcast(shape, src=src, group=self.group)
        self.dimension, self.count = int(shape[0]), int(shape[1])

    def retrieve(self, vectors: np.ndarray, k: int) -> RetrievalResult:
        """Top-k passages for this rank's float32[B, d] question vectors (collective: all ranks call together)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        problem = ""
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            problem = f"question vectors have shape {vectors.shape}; the index has dimension {self.dimension}"
        elif not 1 <= k <= self.count:
            problem = f"k={k} but the index holds {self.count} passages"
        sizes = self._all_sizes(0 if problem else len(vectors), k, problem)
        queries = self._gather_queries(np.ascontiguousarray(vectors), sizes)
        payloads = self._search_and_split(queries, sizes, k) if self.rank == self.src else None
        result = self._scatter_payloads(payloads)
        return result

    def _all_sizes(self, batch: int, k: int, problem: str) -> list[int]:
        """Every rank's batch size. A bad call on any rank (shape, k, k differing between ranks) raises on
        EVERY rank, after this one exchange: raising alone would leave the others waiting forever."""
        mine = torch.tensor([batch, k, 0 if problem else 1], dtype=torch.int64)
        everyone = [torch.empty(3, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(everyone, mine, group=self.group)
        if problem:
            raise RetrievalError(f"rank {self.rank}: {problem}")
        bad = [r for r, t in enumerate(everyone) if not t[2]]
        if bad:
            raise RetrievalError(f"rank {bad[0]} made a bad retrieve call (see its error); every rank stops")
        ks = {int(t[1]) for t in everyone}
        if len(ks) != 1:
            raise RetrievalError(f"ranks called retrieve with different k {sorted(ks)}; k must be equal on all ranks")
        return [int(t[0]) for t in everyone]

    def _gather_queries(self, vectors: np.ndarray, sizes: list[int]) -> np.ndarray | None:
        """Rank src gets float32[sum(sizes), d] (rank order); other ranks get None."""
        padded_rows = max(max(sizes), 1)
        mine = torch.zeros((padded_rows, self.dimension), dtype=torch.float32)
        mine[:len(vectors)] = torch.from_numpy(vectors)
        bucket = [torch.empty_like(mine) for _ in range(self.world)] if self.rank == self.src else None
        dist.gather(mine, bucket, dst=self.src, group=self.group)
        if bucket is None:
            return None
        return np.concatenate([t[:n].numpy() for t, n in zip(bucket, sizes)])

    def _search_and_split(self, queries: np.ndarray, sizes: list[int], k: int) -> list:
        """One search over every rank's questions, cut back into per-rank results (pickled for the other ranks)."""
        if len(queries):
            result = self.local.retrieve(queries, k)
        else:  # every rank sent an empty batch
            result = RetrievalResult(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32),
                                     np.zeros((0, k, self.dimension), np.float32), [], [])
        parts, start = [], 0
        for rank, n in enumerate(sizes):
            part = result.rows(start, start + n)
            # One pickle per rank makes the five fields one scatter; rank src keeps its part unpickled.
            parts.append(part if rank == self.src else pickle.dumps(part, protocol=5))
            start += n
        return parts

    def _scatter_payloads(self, parts: list | None) -> RetrievalResult:
        """Rank r receives parts[r]; the pickles travel as uint8 tensors padded to the longest."""
        lengths = torch.zeros(self.world, dtype=torch.int64)
        if parts is not None:
            lengths[:] = torch.tensor([0 if r == self.src else len(p) for r, p in enumerate(parts)])
        dist.broadcast(lengths, src=self.src, group=self.group)
        padded = max(int(lengths.max()), 1)
        out = torch.empty(padded, dtype=torch.uint8)
        chunks = None
        if parts is not None:
            chunks = [torch.empty(padded, dtype=torch.uint8) for _ in parts]
            for r, (chunk, p) in enumerate(zip(chunks, parts)):
                if r != self.src:
                    chunk.numpy()[:len(p)] = np.frombuffer(p, dtype=np.uint8)
        dist.scatter(out, chunks, src=self.src, group=self.group)
        if parts is not None:
            return parts[self.src]
        return pickle.loads(memoryview(out.numpy())[:int(lengths[self.rank])])


def open_torch_retriever(index_dir: str, cfg, rank: int) -> TorchDistributedRetriever:
    """Retrieval mode `torch` (pipeline/retrieval/modes.py); a collective: every rank opens it together."""
    return TorchDistributedRetriever(index_dir, cfg.faiss_threads, params=SearchParams.from_config(cfg))
