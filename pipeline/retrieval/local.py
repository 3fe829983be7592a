"""Retrieval mode `local`: every shard searched in this process (one worker, tests, the benchmark's floor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import RetrievalError
from pipeline.index.manifest import read_manifest
from pipeline.index.search import SearchParams
from pipeline.retrieval.result import RetrievalResult, merge_results
from pipeline.retrieval.shard import ShardSearcher


class LocalRetriever:
    """Same call contract as RetrievalClient, without Ray."""

    def __init__(self, index_dir: str | Path, faiss_threads: int = 1, params: SearchParams = SearchParams()):
        manifest = read_manifest(index_dir)
        self.shards = [ShardSearcher(index_dir, s, faiss_threads, params) for s in range(manifest.num_shards)]
        self.dimension, self.count = manifest.dimension, manifest.count

    def retrieve(self, vectors: np.ndarray, k: int) -> RetrievalResult:
        """Top-k passages for float32[B, d] question vectors."""
        if not 1 <= k <= self.count:
            raise RetrievalError(f"k={k} but the index holds {self.count} passages")
        return merge_results([s.search(vectors, k) for s in self.shards], k)


def open_local_retriever(index_dir: str, cfg, rank: int) -> LocalRetriever:
    """Retrieval mode `local` (pipeline/retrieval/modes.py): every shard of `index_dir` in this process."""
    return LocalRetriever(index_dir, faiss_threads=cfg.faiss_threads, params=SearchParams.from_config(cfg))
