"""One shard of an index directory, searchable in-process. The actor, local and torch modes all use it."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from pipeline.errors import IndexFormatError, RetrievalError
from pipeline.index.exact_scan import compile_exact_scan
from pipeline.index.float16_scores import compile_float16_scores
from pipeline.index.manifest import (
    PASSAGES,
    VECTOR_FILES,
    open_passages,
    open_vectors,
    read_manifest,
    shard_file,
)
from pipeline.index.search import SearchParams, effective_settings, search_shard
from pipeline.index.versions import resolve_version
from pipeline.retrieval.result import RetrievalResult


class ShardSearcher:
    """Holds shard `shard` of `index_dir`: its FAISS index, and memory maps of its passages and exact vectors.

    Before FAISS reads anything, every file's size is checked against the manifest and the shard's FAISS file
    against its checksum; with `verify_checksums` the (large) passages and vectors files' checksums too.
    """

    def __init__(self, index_dir: str | Path, shard: int, faiss_threads: int = 1,
                 params: SearchParams = SearchParams(), verify_checksums: bool = False):
        # A location serves its CURRENT version; this searcher keeps serving that version's files.
        self.index_dir = resolve_version(index_dir).directory
        # A shard's FAISS file is checksummed on every load: FAISS reads a damaged one into garbage or a crash.
        # The vectors and passages are read as memory maps and cost a full read pass (64 GB at 21M passages),
        # so only on request (retrieval.verify_checksums).
        checksums = [shard_file(shard)] + ([PASSAGES, *VECTOR_FILES] if verify_checksums else [])
        self.manifest = read_manifest(self.index_dir, checksums=checksums)
        if not 0 <= shard < self.manifest.num_shards:
            raise IndexFormatError(f"{self.index_dir}: no shard {shard} (manifest has {self.manifest.num_shards})")
        self.shard = shard
        self.start, self.end = self.manifest.shard_range(shard)
        # FAISS's default (all cores per search) makes actors sharing a node fight over the cores.
        self.faiss_threads = faiss_threads
        self.params = params
        # Memory-map the index codes, the exact vectors and the passages, so replicas on one node share pages.
        self.index = read_shard_index(self.index_dir / shard_file(shard))
        if self.index.ntotal != self.end - self.start or self.index.d != self.manifest.dimension:
            raise IndexFormatError(
                f"{self.index_dir / shard_file(shard)}: {self.index.ntotal} vectors of dimension {self.index.d}, "
                f"manifest says {self.end - self.start} of dimension {self.manifest.dimension}"
            )
        self.vectors = open_vectors(self.index_dir, self.manifest)[self.start:self.end]
        passages = open_passages(self.index_dir).slice(self.start, self.end - self.start)
        self.titles, self.texts = RowLookup(passages.column("title")), RowLookup(passages.column("text"))
        self.fallback_rows = 0
        compile_exact_scan()  # numba's compile (or disk-cache load, ~1 s) here at load, not in the first search
        if self.vectors.dtype == np.float16:
            compile_float16_scores()

    def check_queries(self, queries) -> np.ndarray:
        """`queries` as C-contiguous float32[B, d]; RetrievalError naming the shapes when they do not fit."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.manifest.dimension:
            raise RetrievalError(
                f"query vectors have shape {queries.shape}, "
                f"index {self.index_dir} expects [B, {self.manifest.dimension}]"
            )
        return queries

    def search(self, queries: np.ndarray, k: int) -> RetrievalResult:
        """Top-min(k, shard size) passages of this shard for float32[B, d] queries (global ids, best first)."""
        # OpenMP thread counts belong to the calling thread, and actors search on threads other than the one
        # that built this searcher: set it where the search runs.
        faiss.omp_set_num_threads(self.faiss_threads)
        queries = self.check_queries(queries)
        if k < 1:
            raise RetrievalError(f"k={k}; at least 1 passage per question")
        hits = search_shard(self.index, self.vectors, self.start, queries, k, self.params)
        self.fallback_rows += hits.fallback_rows
        rows = (hits.ids - self.start).ravel()
        width = hits.ids.shape[1]
        return RetrievalResult(
            ids=hits.ids, scores=hits.scores, vectors=hits.vectors,
            titles=_rows(self.titles.values(rows), width),
            texts=_rows(self.texts.values(rows), width), version=str(self.index_dir),
        )

    def settings(self) -> dict:
        """The search as served: threads, and nprobe / ef_search / rerank_factor for approximate indexes."""
        return {"faiss_threads": self.faiss_threads, **effective_settings(self.index, self.params)}


def read_shard_index(path: Path) -> faiss.Index:
    """A shard's FAISS index, memory-mapped; IndexFormatError for a file FAISS cannot read (a format 2 index
    records no checksum, so a damaged shard is first seen here)."""
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1][:200]
        raise IndexFormatError(f"{path}: FAISS cannot read it ({reason}); copy the index again or rebuild it") \
            from None


class RowLookup:
    """Values of a memory-mapped ChunkedArray by row number, costing O(rows asked), not O(column length).

    `ChunkedArray.take` costs time proportional to the whole column (ms per call at a million passages), and
    a `take` per chunk costs ~10 us per chunk touched; a call asks for tens of rows spread over the whole
    shard, so each row is read on its own from its chunk (~3 us).
    """

    def __init__(self, column):
        self.chunks = column.chunks
        self.starts = np.cumsum([0] + [len(c) for c in self.chunks])

    def values(self, rows: np.ndarray) -> list:
        """Python values of `rows` (int[n], in order)."""
        chunk_of = np.searchsorted(self.starts, rows, side="right") - 1
        return [self.chunks[chunk][int(row - self.starts[chunk])].as_py() for chunk, row in zip(chunk_of, rows)]


def _rows(values: list, k: int) -> list[list]:
    return [values[i:i + k] for i in range(0, len(values), k)]
