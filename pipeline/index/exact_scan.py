"""Exact inner-product top-k of a batch of questions in one pass over a shard's vectors (numba).

FAISS's exact search of B > 2 questions is a BLAS matrix product in blocks (B x 1024 rows of scores at a
time, then a top-k over each block). For the skinny products of retrieval (B = 1-64 questions against 100k+
rows) that product runs at a quarter of this CPU's single-core peak, so the search costs 2-3x one read of
the vectors (docs/results.md). This kernel instead takes 4 rows of vectors at a time (12 KB at d=768, held
in L1) and scores them against every question (the questions stay cache-resident), keeping a running top-k
per question in a min-heap: each stored vector is read from memory once per call for all its questions, and
no score matrix is written out.

The kernel is compiled on first use and cached on disk (`cache=True`); `compile_exact_scan()` does that at
start-up (the retrieval actors call it when they load a shard), so no JIT compile lands in a search call.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise

import faiss
import numpy as np
from numba import njit

# fastmath without 'nnan'/'ninf': the heaps start at -inf and must compare with it as IEEE says; the other
# flags let LLVM reassociate each dot product into vector accumulators.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_ROWS = 4  # rows scored together: 4 accumulators per question, 4 rows of vectors reused from L1
# Up to this many questions `exact_search` takes this kernel: from 1 question (as fast as FAISS's per-query
# scan) to 32 (faster than FAISS's product); above, FAISS's matrix product is faster. Crossover measured by
# jobs/benchmark_retrieval.py (`exact_paths` in its JSON, docs/results.md).
EXACT_SCAN_UP_TO_BATCH = 32
_CONVERT_ROWS = 1 << 15  # float16 rows converted at once by _exact_search_by_blocks: 96 MB as float32 at 768-d


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int,
                 index: faiss.Index | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32[B, k], rows int64[B, k]) of the exact inner-product top-k of `vectors` for `queries`,
    by the faster path for B questions: this kernel, or FAISS (`index`, a Flat index holding `vectors`, or
    a search of `vectors` without one). Uses the calling thread's FAISS (OpenMP) thread count. Vectors stored
    as float16 are searched block by block as float32 (an approximate shard's fallback for unfilled rows)."""
    threads = faiss.omp_get_max_threads()
    if vectors.dtype != np.float32:
        return _exact_search_by_blocks(vectors, queries, k)
    if len(queries) <= EXACT_SCAN_UP_TO_BATCH:
        return exact_top_k(vectors, queries, k, threads)
    if index is None:
        return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return index.search(queries, k)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int,
                threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32[B, k], rows int64[B, k]) of the k largest inner products of each of `queries`
    (float32[B, d]) with the rows of `vectors` (float32[n, d], e.g. a memory map), best first, equal scores
    by ascending row; rows are 0-based within `vectors`. Needs 1 <= k <= n. `threads` > 1 splits the rows
    into that many ranges scanned at once (the kernel releases the GIL) and merges their top-k."""
    n, d = vectors.shape
    if not 1 <= k <= n or queries.ndim != 2 or queries.shape[1] != d:
        raise ValueError(f"exact_top_k: k={k} of {n} rows, queries {queries.shape} against vectors {vectors.shape}")
    vectors, queries = _readonly(vectors), _readonly(queries)
    bounds = np.linspace(0, n, max(1, min(threads, n // max(k, _ROWS))) + 1).astype(np.int64)
    parts = [(vectors[a:b], a) for a, b in pairwise(bounds)]
    if len(parts) == 1:
        found = [_top_k_of_range(queries, k, *parts[0])]
    else:
        found = list(_pool(len(parts)).map(lambda part: _top_k_of_range(queries, k, *part), parts))
    scores = np.concatenate([s for s, _ in found], axis=1)
    rows = np.concatenate([r for _, r in found], axis=1)
    order = np.lexsort((rows, -scores), axis=1)[:, :k]  # by score, descending, then by row
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def _exact_search_by_blocks(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """exact_search over `vectors` of another dtype, converted to float32 one block of rows at a time, so the
    search never holds a float32 copy of the whole shard."""
    found = []
    for start in range(0, len(vectors), _CONVERT_ROWS):
        block = np.asarray(vectors[start:start + _CONVERT_ROWS], dtype=np.float32)
        scores, rows = exact_search(block, np.ascontiguousarray(queries, np.float32), min(k, len(block)))
        found.append((scores, rows + start))
    scores = np.concatenate([s for s, _ in found], axis=1)
    rows = np.concatenate([r for _, r in found], axis=1)
    order = np.lexsort((rows, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def compile_exact_scan() -> None:
    """Compile (or load from numba's disk cache) the kernel for the array types searches pass it."""
    exact_top_k(np.zeros((_ROWS + 1, 2), dtype=np.float32), np.zeros((1, 2), dtype=np.float32), 1)


def _top_k_of_range(queries: np.ndarray, k: int, vectors: np.ndarray, first_row: int):
    """Unsorted top-min(k, rows) of one range of rows, as (scores, global rows)."""
    width = min(k, len(vectors))
    heap_scores = np.full((len(queries), width), -np.inf, dtype=np.float32)
    heap_rows = np.full((len(queries), width), -1, dtype=np.int64)
    _scan(vectors, queries, heap_scores, heap_rows)
    return heap_scores, heap_rows + first_row


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count for the process's life: threads cost ~0.1 ms each to start per call."""
    return ThreadPoolExecutor(threads, thread_name_prefix="exact-scan")


def _readonly(array: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 read-only plain-ndarray view (no copy when it already is one): numba compiles
    once per array type, and writable vs read-only (a memory map) are two types; one type, one compile."""
    view = np.ascontiguousarray(np.asarray(array), dtype=np.float32).view()
    view.flags.writeable = False
    return view


@njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _push(heap_scores, heap_rows, q, score, row):
    """Offer (score, row) to question q's min-heap of its k best so far (root = the k-th best)."""
    k = heap_scores.shape[1]
    if not score > heap_scores[q, 0]:
        return
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        if child + 1 < k and heap_scores[q, child + 1] < heap_scores[q, child]:
            child += 1
        if heap_scores[q, child] >= score:
            break
        heap_scores[q, pos] = heap_scores[q, child]
        heap_rows[q, pos] = heap_rows[q, child]
        pos = child
    heap_scores[q, pos] = score
    heap_rows[q, pos] = row


@njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _scan(vectors, queries, heap_scores, heap_rows):
    """Every row of `vectors` against every question, 4 rows at a time, into the per-question heaps."""
    n, d = vectors.shape
    blocked = n - n % 4
    for i in range(0, blocked, 4):
        for q in range(queries.shape[0]):
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            s3 = np.float32(0.0)
            for j in range(d):
                x = queries[q, j]
                s0 += vectors[i, j] * x
                s1 += vectors[i + 1, j] * x
                s2 += vectors[i + 2, j] * x
                s3 += vectors[i + 3, j] * x
            _push(heap_scores, heap_rows, q, s0, i)
            _push(heap_scores, heap_rows, q, s1, i + 1)
            _push(heap_scores, heap_rows, q, s2, i + 2)
            _push(heap_scores, heap_rows, q, s3, i + 3)
    for i in range(blocked, n):
        for q in range(queries.shape[0]):
            s = np.float32(0.0)
            for j in range(d):
                s += vectors[i, j] * queries[q, j]
            _push(heap_scores, heap_rows, q, s, i)
