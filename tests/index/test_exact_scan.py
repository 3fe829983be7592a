"""The one-pass exact search (pipeline/index/exact_scan.py) answers what FAISS's exact search answers."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from pipeline.index import exact_scan
from pipeline.index.exact_scan import (
    EXACT_SCAN_UP_TO_BATCH,
    compile_exact_scan,
    exact_search,
    exact_top_k,
)
from pipeline.index.search import SearchParams, search_shard


def _faiss_exact(vectors, queries, k):
    return faiss.knn(np.ascontiguousarray(queries), np.ascontiguousarray(vectors), k,
                     metric=faiss.METRIC_INNER_PRODUCT)


def _assert_same_top_k(scores, rows, vectors, queries, k, exact_ties: bool):
    """Same scores as FAISS's exact top-k, and every row's true score is its score: where scores tie, any of
    the tied rows is a right answer, so rows are checked through their scores, not compared one by one."""
    want_scores, want_rows = _faiss_exact(vectors, queries, k)
    assert scores.shape == rows.shape == (len(queries), k) and scores.dtype == np.float32
    tolerance = {"rtol": 0, "atol": 0} if exact_ties else {"rtol": 1e-5, "atol": 1e-4}
    np.testing.assert_allclose(scores, want_scores, **tolerance)
    true = np.einsum("bd,bkd->bk", queries.astype(np.float64), vectors[rows].astype(np.float64))
    np.testing.assert_allclose(scores, true, **tolerance)
    assert all(len(set(r)) == k for r in rows.tolist()) and (rows >= 0).all()
    if not exact_ties:  # random floats: no ties, so the very rows FAISS returns
        np.testing.assert_array_equal(rows, want_rows)


@pytest.mark.parametrize("batch", range(1, 65))
def test_top_k_equals_faiss_exact_search_for_every_batch_size(batch):
    rng = np.random.default_rng(batch)
    vectors = rng.standard_normal((1003, 24), dtype=np.float32)  # 1003: rows left over after blocks of 4
    queries = rng.standard_normal((batch, 24), dtype=np.float32)
    scores, rows = exact_search(vectors, queries, 7)
    _assert_same_top_k(scores, rows, vectors, queries, 7, exact_ties=False)
    scores, rows = exact_top_k(vectors, queries, 7)
    _assert_same_top_k(scores, rows, vectors, queries, 7, exact_ties=False)


@pytest.mark.parametrize("batch", [1, 3, 8, 33])
def test_tied_scores_give_tied_rows_ordered_by_row(batch):
    rng = np.random.default_rng(0)
    # Small integers: every sum is exact in float32, and most scores tie with many others.
    vectors = rng.integers(-2, 3, (500, 8)).astype(np.float32)
    queries = rng.integers(-1, 2, (batch, 8)).astype(np.float32)
    scores, rows = exact_top_k(vectors, queries, 20)
    _assert_same_top_k(scores, rows, vectors, queries, 20, exact_ties=True)
    tied = scores[:, 1:] == scores[:, :-1]
    assert tied.any() and (rows[:, 1:][tied] > rows[:, :-1][tied]).all()


@pytest.mark.parametrize("n", [1, 3, 4, 5, 9])
def test_k_up_to_the_whole_shard_returns_every_row_best_first(n):
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, 16), dtype=np.float32)
    queries = rng.standard_normal((5, 16), dtype=np.float32)
    scores, rows = exact_top_k(vectors, queries, n)
    _assert_same_top_k(scores, rows, vectors, queries, n, exact_ties=False)
    assert (np.sort(rows, axis=1) == np.arange(n)).all()
    with pytest.raises(ValueError, match="k=10 of 9 rows" if n == 9 else "k="):
        exact_top_k(vectors, queries, n + 1)


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_rows_split_over_threads_give_the_same_answer(threads):
    rng = np.random.default_rng(threads)
    vectors = rng.standard_normal((2001, 32), dtype=np.float32)
    queries = rng.standard_normal((6, 32), dtype=np.float32)
    one = exact_top_k(vectors, queries, 11)
    split = exact_top_k(vectors, queries, 11, threads=threads)
    np.testing.assert_array_equal(split[1], one[1])
    np.testing.assert_allclose(split[0], one[0], rtol=1e-6)


def test_flat_shard_smaller_than_k_answers_every_row_with_global_ids():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((6, 16), dtype=np.float32)
    index = faiss.IndexFlatIP(16)
    index.add(vectors)
    queries = rng.standard_normal((4, 16), dtype=np.float32)
    hits = search_shard(index, vectors, 100, queries, 10)
    _assert_same_top_k(hits.scores, hits.ids - 100, vectors, queries, 6, exact_ties=False)
    np.testing.assert_array_equal(hits.vectors, vectors[hits.ids - 100])


def test_rerank_rows_left_short_by_the_approximate_index_get_the_exact_top_k():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((400, 16), dtype=np.float32)
    # 64 lists, 1 probed: many questions find fewer than k candidates (-1 slots), and take the exact search.
    index = faiss.index_factory(16, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    queries = rng.standard_normal((12, 16), dtype=np.float32)
    hits = search_shard(index, vectors, 0, queries, 10, SearchParams(nprobe=1))
    assert hits.fallback_rows > 0 and (hits.ids >= 0).all()
    _, candidates = index.search(queries, 10)
    short = (candidates >= 0).sum(axis=1) < 10
    _assert_same_top_k(hits.scores[short], hits.ids[short], vectors, queries[short], 10, exact_ties=False)


def test_batches_above_the_crossover_take_faiss_and_agree():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 16), dtype=np.float32)
    index = faiss.IndexFlatIP(16)
    index.add(vectors)
    queries = rng.standard_normal((EXACT_SCAN_UP_TO_BATCH + 1, 16), dtype=np.float32)
    for found in (exact_search(vectors, queries, 5, index), exact_search(vectors, queries, 5)):
        _assert_same_top_k(*found, vectors, queries, 5, exact_ties=False)


def test_a_search_after_compile_compiles_nothing_more(tmp_path):
    compile_exact_scan()
    compiled = len(exact_scan._scan.signatures)
    path = tmp_path / "vectors.f32"
    np.random.default_rng(4).standard_normal((50, 16), dtype=np.float32).tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(50, 16))  # read-only, as a shard's vectors
    writable = np.array(mapped)
    queries = np.asfortranarray(np.ones((3, 16), dtype=np.float64))  # converted, not compiled for
    for vectors in (mapped, mapped[10:40], writable):
        exact_top_k(vectors, queries, 5)
    assert len(exact_scan._scan.signatures) == compiled == 1
