"""Retrieval mode `torch` (rank 0 gathers, searches once, scatters) and the modes' agreement on ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch.multiprocessing as mp

from pipeline.config import RetrievalConfig
from pipeline.errors import ConfigError, RetrievalError
from pipeline.index.manifest import read_manifest
from pipeline.retrieval.factory import make_retriever
from pipeline.retrieval.group import start_retrieval_group, stop_retrieval_group
from pipeline.retrieval.local import LocalRetriever
from tests.conftest import TEST_NAMESPACE


def _queries(index_dir, n: int, seed: int) -> np.ndarray:
    dimension = read_manifest(index_dir).dimension
    return np.random.default_rng(seed).standard_normal((n, dimension)).astype(np.float32)


def _rank_main(rank: int, world: int, init_file: str, index_dir: str, batches: list, k: int, out_dir: str) -> None:
    """One rank: join a gloo group, retrieve each of its batches through mode 'torch', save what came back."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        retriever = make_retriever("torch", index_dir, RetrievalConfig(), rank)
        assert retriever.dimension == read_manifest(index_dir).dimension
        for step, queries in enumerate(batches[rank]):
            try:
                result = retriever.retrieve(queries, k)
            except RetrievalError as e:
                np.savez(f"{out_dir}/rank{rank}_step{step}.npz", error=str(e))
                continue
            np.savez(f"{out_dir}/rank{rank}_step{step}.npz", ids=result.ids, scores=result.scores,
                     vectors=result.vectors, titles=np.array(result.titles, dtype=object).reshape(len(queries), k),
                     texts=np.array(result.texts, dtype=object).reshape(len(queries), k))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_torch_ranks(index_dir, batches: list[list[np.ndarray]], k: int, tmp_path) -> list[list[dict]]:
    """Spawn len(batches) ranks; rank r retrieves batches[r] in order. Returns [rank][step] -> arrays."""
    world = len(batches)
    mp.spawn(_rank_main, args=(world, str(tmp_path / "init"), str(index_dir), batches, k, str(tmp_path)),
             nprocs=world, join=True)
    return [[dict(np.load(tmp_path / f"rank{r}_step{s}.npz", allow_pickle=True)) for s in range(len(batches[r]))]
            for r in range(world)]


def test_torch_mode_gathers_uneven_batches_and_scatters_each_rank_its_rows(flat_index, tmp_path):
    # Rank 0 asks 3, 0, 2, 1 questions, rank 1 asks 5, 2, (a wrong dimension), 4: uneven and empty batches
    # in one collective; the bad call fails on BOTH ranks (no hang) and the next call works again.
    batches = [[_queries(flat_index, 3, 0), _queries(flat_index, 0, 1), _queries(flat_index, 2, 4),
                _queries(flat_index, 1, 5)],
               [_queries(flat_index, 5, 2), _queries(flat_index, 2, 3), np.zeros((2, 16), np.float32),
                _queries(flat_index, 4, 6)]]
    got = _run_torch_ranks(flat_index, batches, 4, tmp_path)
    assert "rank 1 made a bad retrieve call" in str(got[0][2]["error"])
    assert "rank 1: question vectors have shape (2, 16); the index has dimension 384" in str(got[1][2]["error"])
    local = LocalRetriever(flat_index)
    for rank in range(2):
        for step, queries in enumerate(batches[rank]):
            if step == 2:
                continue
            mine = got[rank][step]
            assert mine["ids"].shape == (len(queries), 4) and mine["vectors"].shape == (len(queries), 4, 384)
            if not len(queries):
                continue
            expected = local.retrieve(queries, 4)
            np.testing.assert_array_equal(mine["ids"], expected.ids)
            np.testing.assert_allclose(mine["scores"], expected.scores, rtol=1e-6)
            np.testing.assert_array_equal(mine["vectors"], expected.vectors)
            assert mine["titles"].tolist() == expected.titles and mine["texts"].tolist() == expected.texts


@pytest.mark.slow  # builds indexes of its own through Ray Data (or a torch process group)
def test_ray_torch_and_local_modes_retrieve_identical_ids(flat_index, ray_cluster, tmp_path):
    cfg = RetrievalConfig(group="modes", namespace=TEST_NAMESPACE, actor_num_cpus=0.1, replicas=2, call_timeout_s=20)
    queries = _queries(flat_index, 6, 7)
    start_retrieval_group(str(flat_index), cfg)
    try:
        ray_ids = [make_retriever("ray", str(flat_index), cfg, rank).retrieve(queries[3 * rank:3 * rank + 3], 5).ids
                   for rank in range(2)]
    finally:
        stop_retrieval_group(cfg.group, cfg.namespace)
    torch_ids = [steps[0]["ids"] for steps in _run_torch_ranks(flat_index, [[queries[:3]], [queries[3:]]], 5, tmp_path)]
    local_ids = make_retriever("local", str(flat_index), cfg, 0).retrieve(queries, 5).ids
    np.testing.assert_array_equal(np.concatenate(ray_ids), local_ids)
    np.testing.assert_array_equal(np.concatenate(torch_ids), local_ids)


def test_unknown_mode_is_a_config_error(flat_index):
    with pytest.raises(ConfigError, match=r"retrieval.mode: 'grpc' is not one of ray, torch, local"):
        make_retriever("grpc", str(flat_index), RetrievalConfig(), 0)
