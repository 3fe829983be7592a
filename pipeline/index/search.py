"""How one shard is searched: FAISS for candidates, the exact vectors for scores, and no empty slots.

Shared by the serving path (`ShardSearcher`) and the build's recall measurement, so the recall recorded in a
manifest is the recall of what is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import faiss
import numpy as np

from pipeline.index.exact_scan import exact_search
from pipeline.index.float16_scores import float16_inner_products

# Exact searches of up to EXACT_SCAN_UP_TO_BATCH questions take the one-pass kernel (exact_scan.py). Larger
# ones, and FAISS's own exact searches (faiss.knn in the build's recall measurement), go through FAISS, which
# answers batches below `distance_compute_blas_threshold` (20 by default) with one scan of the vectors per
# query and larger ones with a blocked matrix product; the scan only wins for 1-2 queries (measured by
# jobs/benchmark_retrieval.py, `exact_paths` in its JSON), so FAISS takes the product from 3. Process-wide,
# like every FAISS global: set once on import, never per call.
EXACT_PRODUCT_FROM_BATCH = 3
faiss.cvar.distance_compute_blas_threshold = EXACT_PRODUCT_FROM_BATCH


@dataclass(frozen=True)
class SearchParams:
    """Settings of an approximate search; 0 keeps FAISS's default (nprobe 1, efSearch 16)."""

    nprobe: int = 0         # IVF: inverted lists visited per query
    ef_search: int = 0      # HNSW: candidate list size while walking the graph
    rerank_factor: int = 1  # approximate indexes: fetch k x this many candidates, keep the k best by exact score

    @classmethod
    def from_config(cls, cfg) -> "SearchParams":
        """The search settings of a `RetrievalConfig`."""
        return cls(nprobe=cfg.nprobe, ef_search=cfg.ef_search, rerank_factor=cfg.rerank_factor)


class ShardHits(NamedTuple):
    """One shard's answer: ids int64[B, k] (global), scores float32[B, k] (exact inner products, best first),
    vectors float32[B, k, d] (exact), fallback_rows (questions the approximate index could not fill)."""

    ids: np.ndarray
    scores: np.ndarray
    vectors: np.ndarray
    fallback_rows: int


def is_exact(index: faiss.Index) -> bool:
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def faiss_parameters(index: faiss.Index, params: SearchParams) -> faiss.SearchParameters | None:
    """Per-call FAISS search parameters for `index` (None: nothing to set). Per call, not set on the index,
    so concurrent searches with different settings cannot see each other's."""
    inner = faiss.downcast_index(index)
    wrapper = None
    if isinstance(inner, faiss.IndexPreTransform):  # e.g. "OPQ16,IVF256,PQ16": the settings go to the inner index
        wrapper, inner = inner, faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexIVF) and params.nprobe:
        found = faiss.SearchParametersIVF(nprobe=params.nprobe)
    elif isinstance(inner, faiss.IndexHNSW) and params.ef_search:
        found = faiss.SearchParametersHNSW(efSearch=params.ef_search)
    else:
        return None
    if wrapper is not None:
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = found
        outer.referenced_objects = [found]  # keep the inner parameters alive as long as the outer ones
        return outer
    return found


def effective_settings(index: faiss.Index, params: SearchParams) -> dict:
    """What a search of `index` with `params` really uses: {'nprobe': n} / {'ef_search': n} / {} for exact."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    settings = {}
    if isinstance(inner, faiss.IndexIVF):
        settings["nprobe"] = params.nprobe or int(inner.nprobe)
    elif isinstance(inner, faiss.IndexHNSW):
        settings["ef_search"] = params.ef_search or int(inner.hnsw.efSearch)
    if settings:
        settings["rerank_factor"] = params.rerank_factor
    return settings


def search_shard(index: faiss.Index, vectors: np.ndarray, start: int, queries: np.ndarray, k: int,
                 params: SearchParams = SearchParams()) -> ShardHits:
    """Top-min(k, shard size) of one shard for float32[B, d] `queries`.

    `vectors` are the shard's exact vectors ([n, d] float32, or float16 read as float32; usually a memory map),
    `start` its first global id.
    Exact (Flat) indexes answer directly. Approximate ones return candidates that are re-scored with the exact
    vectors; a slot FAISS leaves empty (-1) is dropped, never read as passage 0, and a question left with fewer
    than k candidates is answered by an exact search of the shard instead, so every row holds k real passages.
    """
    n = len(vectors)
    k = min(k, n)
    if is_exact(index):
        scores, local = exact_search(vectors, queries, k, index)
        return ShardHits(local + start, scores.astype(np.float32, copy=False), _gather(vectors, local), 0)
    fetch = min(k * params.rerank_factor, n)
    _, local = index.search(queries, fetch, params=faiss_parameters(index, params))
    found = local >= 0
    scores = _exact_scores(queries, vectors, local)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    local = np.take_along_axis(local, order, 1)
    scores = np.take_along_axis(scores, order, 1)
    short = np.flatnonzero(found.sum(axis=1) < k)
    if len(short):
        scores[short], local[short] = exact_search(vectors, queries[short], k)
    return ShardHits(local + start, scores, _gather(vectors, local), len(short))


def _exact_scores(queries: np.ndarray, vectors: np.ndarray, local: np.ndarray) -> np.ndarray:
    """float32[B, m] inner products of each question with its m candidate rows of `vectors` (-inf where the
    candidate is -1), read in place: copying the B x m candidate rows out first costs more than scoring them.
    float16 rows are widened in registers (float16_scores.py)."""
    if vectors.dtype == np.float16:
        return float16_inner_products(queries, vectors, local)
    queries, vectors = np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(vectors, np.float32)
    local = np.ascontiguousarray(local, dtype=np.int64)
    scores = np.empty(local.shape, dtype=np.float32)
    faiss.fvec_inner_products_by_idx(faiss.swig_ptr(scores), faiss.swig_ptr(queries), faiss.swig_ptr(vectors),
                                     faiss.swig_ptr(local), queries.shape[1], local.shape[0], local.shape[1])
    return scores


def _gather(vectors: np.ndarray, local: np.ndarray) -> np.ndarray:
    """float32[B, k, d] rows of `vectors` (a memory map reads only these pages)."""
    return np.asarray(vectors[local.ravel()], dtype=np.float32).reshape(*local.shape, vectors.shape[1])
