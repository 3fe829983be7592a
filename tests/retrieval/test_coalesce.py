"""SERVE: concurrent calls to one actor are searched as one batch, and each caller gets its solo answer."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import ray

from pipeline.bench.synthetic import write_synthetic_index
from pipeline.config import RetrievalConfig
from pipeline.errors import RetrievalError
from pipeline.retrieval.coalesce import Coalescer
from pipeline.retrieval.group import start_retrieval_group, stop_retrieval_group
from pipeline.retrieval.group_record import actor_name
from pipeline.retrieval.local import LocalRetriever
from pipeline.retrieval.shard import ShardSearcher
from tests.conftest import TEST_NAMESPACE


@pytest.fixture(scope="module")
def small_flat(tmp_path_factory):
    directory = tmp_path_factory.mktemp("coalesce") / "flat"
    write_synthetic_index(directory, count=4000, dimension=48, factory="Flat")
    return directory


def _calls(dimension: int, shapes: list[tuple[int, int]], seed: int = 0) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((b, dimension)).astype(np.float32), k) for b, k in shapes]


def _assert_same(result, expected):
    np.testing.assert_array_equal(result.ids, expected.ids)
    np.testing.assert_allclose(result.scores, expected.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result.vectors, expected.vectors)
    assert result.titles == expected.titles and result.texts == expected.texts


def test_coalesced_callers_get_exactly_their_solo_results(small_flat):
    searcher = ShardSearcher(small_flat, 0)
    coalescer = Coalescer(window_s=1.0)
    calls = _calls(48, [(3, 5), (1, 5), (8, 2), (2, 5), (1, 7), (5, 2)])
    results = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def call(i):
        start.wait()
        results[i] = coalescer.search(searcher.search, *calls[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for (queries, k), result in zip(calls, results):
        assert result.ids.shape == (len(queries), k)
        _assert_same(result, searcher.search(queries, k))
    # Six callers within one window: fewer batches than calls, i.e. they really were searched together.
    assert coalescer.largest_batch >= 2 and coalescer.searches < len(calls)


@pytest.mark.parametrize("window_ms", [200.0, 0.0])
def test_bad_input_fails_only_its_own_caller(small_flat, ray_cluster, window_ms):
    cfg = RetrievalConfig(group=f"coalesce-{int(window_ms)}", namespace=TEST_NAMESPACE, actor_num_cpus=0.1,
                          coalesce_window_ms=window_ms, max_concurrency=16)
    start_retrieval_group(str(small_flat), cfg)
    try:
        actor = ray.get_actor(actor_name(cfg.group, 0, 0), namespace=TEST_NAMESPACE)
        good = _calls(48, [(3, 4), (1, 4), (5, 2), (2, 9)] * 2, seed=1)
        futures = [actor.search.remote(q, k) for q, k in good[:4]]
        wrong_dimension = actor.search.remote(np.zeros((2, 16), np.float32), 4)
        zero_k = actor.search.remote(good[0][0], 0)
        futures += [actor.search.remote(q, k) for q, k in good[4:]]
        solo = LocalRetriever(small_flat).shards[0]
        for (queries, k), result in zip(good, ray.get(futures)):
            _assert_same(result, solo.search(queries, k))
        for bad, message in ((wrong_dimension, r"shape \(2, 16\).*expects \[B, 48\]"), (zero_k, r"k=0")):
            with pytest.raises(ray.exceptions.RayTaskError) as error:
                ray.get(bad)
            assert isinstance(error.value.cause, RetrievalError)
            assert re.search(message, str(error.value.cause)), str(error.value.cause)
        info = ray.get(actor.describe.remote())
        assert info["calls"] == 10 and info["coalesce_window_ms"] == window_ms
        if window_ms:  # ten calls sent at once reach the actor within the window: batched
            assert info["largest_batch"] >= 2 and info["searches"] < 8
        else:
            assert info["largest_batch"] == 1 and info["searches"] == 10
    finally:
        stop_retrieval_group(cfg.group, cfg.namespace)
