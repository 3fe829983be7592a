"""Recall@10 of an approximate index against exact search, measured at build time for the manifest.

Queries are stored vectors sampled at random (each finds itself among the exact top-10, so the figure is
what a question close to one passage sees). The approximate side is the served search path
(`pipeline/index/search.py`: candidates, exact re-scoring, merge over shards), run at a few settings of
the index's knob so a user can pick nprobe / ef_search from the manifest.
"""

from __future__ import annotations

import faiss
import numpy as np

from pipeline.index.search import SearchParams, is_exact, search_shard

RECALL_K = 10


def settings_to_try(index: faiss.Index) -> list[SearchParams]:
    """FAISS's default and a few larger settings of the knob `index` has (none for an exact index)."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexIVF):
        return [SearchParams(nprobe=n) for n in (1, 4, 16, 64, 256) if n <= inner.nlist]
    if isinstance(inner, faiss.IndexHNSW):
        return [SearchParams(ef_search=e) for e in (16, 32, 64, 128, 256)]
    return []


def measure_recall(indexes: list[faiss.Index], vectors: np.ndarray, offsets: list[int], queries: int,
                   seed: int = 0, exact: np.ndarray | None = None) -> list[dict]:
    """Recall@10 vs exact for each setting of `settings_to_try`; [] for exact indexes or `queries` = 0.

    `indexes[s]` holds ids [offsets[s], offsets[s + 1]) of `vectors` (the served exact vectors, [count, d]);
    `exact` the float32 vectors they were stored from, when those differ (index.vector_dtype float16): the
    questions and the truth come from them. Returns rows {"nprobe" | "ef_search": value, "recall": mean
    fraction of the exact top-10 found, "queries": n}.
    """
    if queries <= 0 or is_exact(indexes[0]):
        return []
    exact = vectors if exact is None else exact
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(exact), min(queries, len(exact)), replace=False))
    q = np.ascontiguousarray(exact[sample], dtype=np.float32)
    k = min(RECALL_K, len(exact))
    truth = _merged_top_k([_exact(exact, offsets, s, q, k) for s in range(len(indexes))], k)
    rows = []
    for params in settings_to_try(indexes[0]):
        found = _merged_top_k([search_shard(index, vectors[offsets[s]:offsets[s + 1]], offsets[s], q, k, params)[:2]
                               for s, index in enumerate(indexes)], k)
        hits = [len(set(a) & set(b)) for a, b in zip(found, truth)]
        setting = {"nprobe": params.nprobe} if params.nprobe else {"ef_search": params.ef_search}
        rows.append({**setting, "recall": round(float(np.mean(hits)) / k, 4), "queries": len(q)})
    return rows


def _exact(vectors: np.ndarray, offsets: list[int], shard: int, q: np.ndarray, k: int) -> tuple:
    start, end = offsets[shard], offsets[shard + 1]
    scores, local = faiss.knn(q, vectors[start:end], min(k, end - start), metric=faiss.METRIC_INNER_PRODUCT)
    return local + start, scores


def _merged_top_k(parts: list[tuple], k: int) -> np.ndarray:
    """int64[B, k] ids of the best k by score over per-shard (ids, scores) pairs."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    scores = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1)
