"""One shard of an index directory, searchable in-process. The actor, local and torch modes all use it."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import IndexFormatError, RetrievalError
from pipeline.index.manifest import PASSAGES, open_vectors, read_manifest, shard_file
from pipeline.retrieval.result import RetrievalResult


class ShardSearcher:
    """Holds shard `shard` of `index_dir`: its FAISS index, its passages, and a map of the exact vectors."""

    def __init__(self, index_dir: str | Path, shard: int, faiss_threads: int = 1):
        self.index_dir = Path(index_dir)
        self.manifest = read_manifest(self.index_dir)
        if not 0 <= shard < self.manifest.num_shards:
            raise IndexFormatError(f"{self.index_dir}: no shard {shard} (manifest has {self.manifest.num_shards})")
        self.shard = shard
        self.start, self.end = self.manifest.shard_range(shard)
        # FAISS's default (all cores per search) makes actors sharing a node fight over the cores.
        self.faiss_threads = faiss_threads
        # Memory-map the index codes and the exact vectors so replicas on one node share the page cache.
        self.index = faiss.read_index(str(self.index_dir / shard_file(shard)), faiss.IO_FLAG_MMAP_IFC)
        if self.index.ntotal != self.end - self.start or self.index.d != self.manifest.dimension:
            raise IndexFormatError(
                f"{self.index_dir / shard_file(shard)}: {self.index.ntotal} vectors of dimension {self.index.d}, "
                f"manifest says {self.end - self.start} of dimension {self.manifest.dimension}"
            )
        self.vectors = open_vectors(self.index_dir, self.manifest)
        table = pq.read_table(self.index_dir / PASSAGES, columns=["title", "text"])
        self.titles = table.column("title").slice(self.start, self.end - self.start).combine_chunks()
        self.texts = table.column("text").slice(self.start, self.end - self.start).combine_chunks()

    def search(self, queries: np.ndarray, k: int) -> RetrievalResult:
        """Top-min(k, shard size) passages of this shard for float32[B, d] queries (global ids)."""
        # OpenMP thread counts belong to the calling thread, and threaded actors search on Ray's pool
        # threads, not the one that built this searcher: set it where the search runs.
        faiss.omp_set_num_threads(self.faiss_threads)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.manifest.dimension:
            raise RetrievalError(
                f"query vectors have shape {queries.shape}, index {self.index_dir} expects [B, {self.manifest.dimension}]"
            )
        k = min(k, self.end - self.start)
        scores, local = self.index.search(queries, k)
        local = np.maximum(local, 0)  # HNSW/IVF may return -1 when they find fewer than k; keep shapes fixed
        flat = local.ravel()
        return RetrievalResult(
            ids=local + self.start,
            scores=scores.astype(np.float32, copy=False),
            vectors=np.asarray(self.vectors[local + self.start], dtype=np.float32),
            titles=_rows(self.titles.take(flat).to_pylist(), k),
            texts=_rows(self.texts.take(flat).to_pylist(), k),
        )


def _rows(values: list, k: int) -> list[list]:
    return [values[i:i + k] for i in range(0, len(values), k)]
