"""SERVE: the named, detached retrieval group against an in-process exact search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray

from jobs import retrieval_service
from pipeline.config import RetrievalConfig
from pipeline.errors import RetrievalError
from pipeline.index.manifest import open_vectors, read_manifest
from pipeline.retrieval.client import RetrievalClient
from pipeline.retrieval.group import (
    group_status,
    start_retrieval_group,
    stop_retrieval_group,
)
from pipeline.retrieval.group_record import list_members
from pipeline.retrieval.local import LocalRetriever
from tests.conftest import TEST_NAMESPACE


def _config(group: str, **overrides) -> RetrievalConfig:
    return RetrievalConfig(group=group, namespace=TEST_NAMESPACE, actor_num_cpus=0.1, call_timeout_s=20, **overrides)


@pytest.fixture
def group_2x2(flat_index, ray_cluster):
    cfg = _config("grid", replicas=2)
    start_retrieval_group(str(flat_index), cfg)
    yield cfg
    stop_retrieval_group(cfg.group, cfg.namespace)


def _queries(index_dir, n=6, seed=0):
    manifest = read_manifest(index_dir)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, manifest.dimension)).astype(np.float32)


def test_group_results_equal_exact_search(flat_index, group_2x2):
    manifest = read_manifest(flat_index)
    vectors = np.asarray(open_vectors(flat_index, manifest))
    queries = _queries(flat_index)
    result = RetrievalClient(group_2x2.group, TEST_NAMESPACE).retrieve(queries, 5)

    exact = queries @ vectors.T
    expected_ids = np.argsort(-exact, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(result.ids, expected_ids)
    np.testing.assert_allclose(result.scores, np.take_along_axis(exact, expected_ids, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result.vectors, vectors[expected_ids])
    local = LocalRetriever(flat_index).retrieve(queries, 5)
    np.testing.assert_array_equal(result.ids, local.ids)
    assert result.texts == local.texts and result.titles == local.titles
    assert result.vectors.dtype == np.float32 and result.ids.dtype == np.int64


def test_group_has_named_detached_shards_and_replicas(group_2x2, flat_index):
    members = list_members(group_2x2.group, TEST_NAMESPACE)
    assert [(m.shard, m.replica) for m in members] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # Starting again under the same name reuses the running actors (same processes).
    pids = {m["pid"] for m in group_status(group_2x2.group, TEST_NAMESPACE)}
    start_retrieval_group(str(flat_index), group_2x2)
    assert {m["pid"] for m in group_status(group_2x2.group, TEST_NAMESPACE)} == pids


def test_another_process_finds_the_group_by_name(group_2x2, flat_index):
    queries = _queries(flat_index, n=3, seed=1)

    @ray.remote(num_cpus=0)
    def retrieve_elsewhere(group, namespace, q):
        import os

        result = RetrievalClient(group, namespace).retrieve(q, 4)
        return os.getpid(), result.ids

    pid, ids = ray.get(retrieve_elsewhere.remote(group_2x2.group, TEST_NAMESPACE, queries))
    import os

    assert pid != os.getpid()
    np.testing.assert_array_equal(ids, LocalRetriever(flat_index).retrieve(queries, 4).ids)


def test_concurrent_clients_spread_over_replicas(group_2x2, flat_index):
    queries = _queries(flat_index, n=2)
    before = {(m["shard"], m["replica"]): m["calls"] for m in group_status(group_2x2.group, TEST_NAMESPACE)}
    for rank in range(4):
        RetrievalClient(group_2x2.group, TEST_NAMESPACE, offset=rank).retrieve(queries, 3)
    after = {(m["shard"], m["replica"]): m["calls"] for m in group_status(group_2x2.group, TEST_NAMESPACE)}
    served = {key: after[key] - before[key] for key in after}
    # Offsets 0..3 on 2 replicas: each replica of each shard answers exactly half of the 4 calls.
    assert served == {key: 2 for key in after}, served


def test_wrong_dimension_and_too_large_k_are_refused(group_2x2, flat_index):
    client = RetrievalClient(group_2x2.group, TEST_NAMESPACE)
    with pytest.raises(RetrievalError, match=r"shape \(2, 16\); group 'grid' serves dimension 384"):
        client.retrieve(np.zeros((2, 16), np.float32), 3)
    count = read_manifest(flat_index).count
    with pytest.raises(RetrievalError, match=rf"k={count + 1} but group 'grid' holds {count} passages"):
        client.retrieve(_queries(flat_index, n=1), count + 1)


def test_missing_group_is_a_clear_error(ray_cluster):
    with pytest.raises(RetrievalError, match=r"retrieval group 'absent' not found in namespace 'rag-tests'"):
        RetrievalClient("absent", TEST_NAMESPACE)


def test_service_cli_start_status_stop_leaves_no_actor(flat_index, capsys):
    args = ["--index.directory", str(flat_index), "--retrieval.group", "cli", "--retrieval.namespace", TEST_NAMESPACE,
            "--retrieval.actor_num_cpus", "0.1"]
    assert retrieval_service.main(["start", *args]) == 0
    assert retrieval_service.main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert out.count('"shard"') == 4  # start + status, two shards each
    assert retrieval_service.main(["stop", *args]) == 0
    assert list_members("cli", TEST_NAMESPACE) == []
    with pytest.raises(ValueError):
        ray.get_actor("cli.shard0.replica0", namespace=TEST_NAMESPACE)
    with pytest.raises(RetrievalError, match="not found"):
        retrieval_service.main(["status", *args])


def test_group_on_another_index_is_not_silently_reused(group_2x2, flat_index, tmp_path):
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(flat_index, other)
    with pytest.raises(RetrievalError, match=r"already serves .* stop it first"):
        start_retrieval_group(str(other), group_2x2)


def test_group_outlives_the_driver_that_started_it(flat_index, ray_cluster):
    """A separate driver process starts the group and exits; the group stays and serves this driver."""
    import subprocess
    import sys

    address = ray.get_runtime_context().gcs_address
    script = (
        "import ray, sys; from pipeline.config import RetrievalConfig; "
        "from pipeline.retrieval.group import start_retrieval_group; "
        f"ray.init(address={address!r}); "
        f"start_retrieval_group({str(flat_index)!r}, RetrievalConfig(group='outlive', namespace={TEST_NAMESPACE!r}, "
        "actor_num_cpus=0.1)); print('started')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "started" in done.stdout, done.stderr[-2000:]
    try:
        client = RetrievalClient("outlive", TEST_NAMESPACE)
        assert client.retrieve(_queries(flat_index, n=2), 3).ids.shape == (2, 3)
    finally:
        assert stop_retrieval_group("outlive", TEST_NAMESPACE) == 2


# ---------------------------------------------------------------- approximate indexes, passages


@pytest.fixture(scope="module")
def approximate_indexes(tmp_path_factory):
    """Two-shard synthetic indexes (4,000 x 48): an HNSW graph and an IVF of 64 lists (~30 vectors each)."""
    from pipeline.bench.synthetic import write_synthetic_index

    root = tmp_path_factory.mktemp("approximate")
    return {factory: write_synthetic_index(root / factory.replace(",", "_"), 4000, 48, factory, shards=2,
                                           recall_queries=100) and root / factory.replace(",", "_")
            for factory in ("HNSW8", "IVF64,Flat")}


def _exact_top(index_dir, queries, k):
    vectors = np.asarray(open_vectors(index_dir, read_manifest(index_dir)))
    scores = queries @ vectors.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k], vectors


@pytest.mark.parametrize("factory,params", [("HNSW8", {"ef_search": 1}), ("IVF64,Flat", {"nprobe": 1})])
def test_empty_faiss_slots_never_become_passage_zero(approximate_indexes, factory, params):
    from pipeline.index.search import SearchParams, faiss_parameters

    index_dir, k = approximate_indexes[factory], 50
    queries = _queries(index_dir, n=12, seed=3)
    local = LocalRetriever(index_dir, params=SearchParams(**params))
    shard = local.shards[0]
    _, raw = shard.index.search(queries, k, params=faiss_parameters(shard.index, shard.params))
    short = np.flatnonzero((raw < 0).any(axis=1))
    assert len(short), "precondition: this setting leaves FAISS slots empty (-1)"
    result = local.retrieve(queries, k)
    exact, vectors = _exact_top(index_dir, queries, k)
    assert result.ids.shape == (12, k) and np.all(result.ids >= 0)
    assert all(len(set(row)) == k for row in result.ids)  # no slot filled twice
    np.testing.assert_array_equal(result.vectors, vectors[result.ids])
    np.testing.assert_allclose(result.scores, np.einsum("bd,bkd->bk", queries, result.vectors), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(result.scores, axis=1) <= 1e-5)
    # Passage 0 appears only where it truly is among the question's exact top-k, and the titles follow the ids.
    for row, ids in enumerate(result.ids):
        assert (0 in ids) <= (0 in exact[row])
    assert result.titles[0] == [f"Passage {i}" for i in result.ids[0]]
    # A question the approximate shard could not fill got the exact answer of that shard.
    assert shard.fallback_rows >= len(short)


def test_search_settings_are_applied_recorded_and_change_recall(approximate_indexes, ray_cluster):
    index_dir = approximate_indexes["IVF64,Flat"]
    queries = _queries(index_dir, n=40, seed=4)
    exact, _ = _exact_top(index_dir, queries, 10)
    recall = {}
    for nprobe in (1, 64):
        cfg = _config(f"ivf-{nprobe}", nprobe=nprobe)
        start_retrieval_group(str(index_dir), cfg)
        try:
            info = group_status(cfg.group, TEST_NAMESPACE)
            assert {m["search"]["nprobe"] for m in info} == {nprobe}
            ids = RetrievalClient(cfg.group, TEST_NAMESPACE).retrieve(queries, 10).ids
            recall[nprobe] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
        finally:
            stop_retrieval_group(cfg.group, TEST_NAMESPACE)
    assert recall[64] == 1.0 and recall[1] < 0.9, recall  # 64 of 64 lists is exhaustive; 1 list is not
    manifest = read_manifest(index_dir)
    rows = {row["nprobe"]: row["recall"] for row in manifest.recall_at_10_vs_exact}
    assert set(rows) == {1, 4, 16, 64} and rows[64] == 1.0 and rows[1] < rows[64]


def test_hnsw_ef_search_is_applied_per_search(approximate_indexes):
    from pipeline.index.search import SearchParams

    index_dir = approximate_indexes["HNSW8"]
    queries = _queries(index_dir, n=40, seed=5)
    exact, _ = _exact_top(index_dir, queries, 10)
    recall = {}
    for ef in (1, 256):
        retriever = LocalRetriever(index_dir, params=SearchParams(ef_search=ef))
        assert retriever.shards[0].settings()["ef_search"] == ef
        ids = retriever.retrieve(queries, 10).ids
        recall[ef] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall[256] > recall[1] + 0.2, recall


def test_replicas_memory_map_the_passages_instead_of_copying_them(flat_index, group_2x2):
    from pipeline.index.manifest import PASSAGES, VECTORS

    members = group_status(group_2x2.group, TEST_NAMESPACE)
    assert len({m["pid"] for m in members}) == 4
    for member in members:
        maps = Path(f"/proc/{member['pid']}/maps").read_text()
        for name in (PASSAGES, VECTORS):
            assert f"{member['index_dir']}/{name}" in maps, f"actor {member['pid']} does not map {name}"


def test_row_lookup_reads_rows_in_asked_order_across_chunks():
    import pyarrow as pa

    from pipeline.retrieval.shard import RowLookup

    column = pa.chunked_array([["a0", "a1", "a2"], [], ["b0"], ["c0", "c1"]])
    rows = np.array([5, 0, 3, 2, 4, 3, 1])
    assert RowLookup(column).values(rows) == [column[int(r)].as_py() for r in rows]
    assert RowLookup(column).values(np.array([], dtype=np.int64)) == []
