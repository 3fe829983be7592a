"""index.vector_dtype float16: an approximate index stores its exact vectors at half the bytes, re-ranks with them
and hands them out as float32; the recall in its manifest is measured against exact float32 search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.bench.synthetic import write_synthetic_corpus, write_synthetic_index
from pipeline.config import IndexConfig, KnowledgeBaseConfig
from pipeline.errors import ConfigError, IndexFormatError
from pipeline.index.build import build_index, build_shards
from pipeline.index.exact_scan import exact_search
from pipeline.index.float16_scores import float16_inner_products
from pipeline.index.manifest import (
    MANIFEST,
    VECTORS,
    IndexManifest,
    even_shard_offsets,
    open_vectors,
    read_manifest,
)
from pipeline.index.search import SearchParams
from pipeline.retrieval.shard import ShardSearcher

COUNT, DIMENSION, FACTORY = 6000, 32, "IVF16,PQ8x4"


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """The same synthetic corpus built twice, float32 and float16 exact vectors, 2 shards each."""
    root = tmp_path_factory.mktemp("float16")
    return {dtype: (root / dtype, write_synthetic_index(root / dtype, COUNT, DIMENSION, FACTORY, shards=2,
                                                        recall_queries=200, vector_dtype=dtype))
            for dtype in ("float32", "float16")}


def test_float16_version_stores_half_the_bytes_and_drops_the_float32_file(indexes):
    (full, full_manifest), (half, half_manifest) = indexes["float32"], indexes["float16"]
    assert half_manifest.vector_dtype == "float16" and read_manifest(half, checksums=True).vector_dtype == "float16"
    assert not (half / VECTORS).exists() and (half / "vectors.f16").is_file()
    assert (half / "vectors.f16").stat().st_size * 2 == (full / VECTORS).stat().st_size
    assert set(half_manifest.files) == {"passages.arrow", "vectors.f16", "shard_0.faiss", "shard_1.faiss"}
    stored = open_vectors(half, half_manifest)
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored, open_vectors(full, full_manifest).astype(np.float16))


def test_recall_is_measured_against_exact_float32(indexes):
    # At the build's rerank factor 1 both versions re-rank the same PQ candidates (the FAISS shards are built
    # from the same float32 vectors), so against the same float32 truth their recall is the same.
    full = {row["nprobe"]: row["recall"] for row in indexes["float32"][1].recall_at_10_vs_exact}
    half = {row["nprobe"]: row["recall"] for row in indexes["float16"][1].recall_at_10_vs_exact}
    assert full == half and len(full) >= 3


def test_shard_rescores_with_float16_rows_and_returns_float32(indexes):
    half, manifest = indexes["float16"]
    searcher = ShardSearcher(half, 1, params=SearchParams(nprobe=4, rerank_factor=8), verify_checksums=True)
    queries = np.random.default_rng(1).standard_normal((5, DIMENSION)).astype(np.float32)
    result = searcher.search(queries, 7)
    assert result.vectors.dtype == np.float32 and result.scores.dtype == np.float32
    stored = open_vectors(half, manifest)
    rows = stored[result.ids].astype(np.float32)
    np.testing.assert_array_equal(result.vectors, rows)
    np.testing.assert_allclose(result.scores, np.einsum("bd,bkd->bk", queries, rows), rtol=1e-5, atol=1e-5)
    assert (np.diff(result.scores, axis=1) <= 0).all()
    start, end = manifest.shard_range(1)
    assert ((result.ids >= start) & (result.ids < end)).all()


def test_rows_the_index_cannot_fill_fall_back_to_an_exact_float16_search(indexes):
    half, manifest = indexes["float16"]
    searcher = ShardSearcher(half, 0, params=SearchParams(nprobe=1, rerank_factor=1))
    queries = np.random.default_rng(2).standard_normal((3, DIMENSION)).astype(np.float32)
    k = 1000  # more than one of 16 inverted lists holds: every row is short
    result = searcher.search(queries, k)
    assert searcher.fallback_rows == 3
    start, end = manifest.shard_range(0)
    shard = open_vectors(half, manifest)[start:end].astype(np.float32)
    want_scores, want_rows = exact_search(shard, queries, k)
    np.testing.assert_allclose(result.scores, want_scores, rtol=1e-5, atol=1e-5)
    assert (np.sort(result.ids, axis=1) == np.sort(want_rows + start, axis=1)).mean() > 0.99  # ties may swap


def test_blocked_float16_search_equals_the_float32_search_of_the_same_values():
    rng = np.random.default_rng(3)
    stored = rng.standard_normal((70_000, 16)).astype(np.float16)  # three blocks of converted rows
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    scores, rows = exact_search(stored, queries, 20)
    want_scores, want_rows = exact_search(stored.astype(np.float32), queries, 20)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    np.testing.assert_array_equal(rows, want_rows)


def test_flat_index_with_float16_vectors_is_refused_before_anything_is_written(tmp_path):
    location = tmp_path / "index"
    with pytest.raises(ConfigError, match=r"index.vector_dtype float16: only for approximate"):
        build_index(KnowledgeBaseConfig(documents=str(tmp_path / "docs.jsonl")),
                    IndexConfig(directory=str(location), factory="Flat", vector_dtype="float16"))
    assert not location.exists()


def test_manifest_whose_vectors_do_not_match_its_dtype_is_refused(indexes, tmp_path):
    half, _ = indexes["float16"]
    raw = json.loads((half / MANIFEST).read_text())
    for dtype, match in (("float64", r"vector_dtype 'float64', this code reads float32 and float16"),):
        (tmp_path / MANIFEST).write_text(json.dumps({**raw, "vector_dtype": dtype}))
        with pytest.raises(IndexFormatError, match=match):
            read_manifest(tmp_path)
    copy = tmp_path / "cut"
    copy.mkdir()
    for name in raw["files"]:
        (copy / name).write_bytes((half / name).read_bytes())
    (copy / "vectors.f16").write_bytes((half / "vectors.f16").read_bytes()[:-2])
    raw["files"]["vectors.f16"]["bytes"] -= 2  # a manifest recording the short file: the dtype's size still fails
    (copy / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(IndexFormatError, match=rf"vectors.f16: {COUNT * DIMENSION * 2 - 2} bytes, manifest says "
                                               rf"{COUNT} x {DIMENSION} float16 = {COUNT * DIMENSION * 2} bytes"):
        read_manifest(copy)


def test_float16_candidate_scores_equal_float64_scores_of_the_stored_values():
    rng = np.random.default_rng(4)
    stored = (rng.standard_normal((500, 96)) * 0.05).astype(np.float16)
    stored[0, :6] = [6e-8, -3e-6, 0.0, -0.0, 65504.0, -1.5e-5]  # subnormal halves, signed zeros, the largest half
    queries = rng.standard_normal((3, 96)).astype(np.float32)
    rows = rng.integers(0, 500, size=(3, 40))
    rows[0, 0], rows[2, 7] = 0, -1
    scores = float16_inner_products(queries, stored, rows)
    want = np.einsum("bd,bmd->bm", queries.astype(np.float64), stored[np.maximum(rows, 0)].astype(np.float64))
    assert scores.dtype == np.float32 and scores[2, 7] == -np.inf
    keep = rows >= 0
    np.testing.assert_allclose(scores[keep], want[keep], rtol=1e-5, atol=1e-5)


def test_a_vector_beyond_float16s_range_is_refused_naming_its_passage(tmp_path):
    write_synthetic_corpus(tmp_path, 2000, 16, seed=0)
    vectors = np.memmap(tmp_path / VECTORS, dtype=np.float32, mode="r+", shape=(2000, 16))
    vectors[1234, 5] = 1e6
    vectors.flush()
    manifest = IndexManifest(encoder="synthetic", pooling="none", max_length=0, dimension=16,
                             metric="inner_product", count=2000, factory="IVF8,PQ4x4",
                             shard_offsets=even_shard_offsets(2000, 1), vector_dtype="float16")
    with pytest.raises(ConfigError, match=r"index.vector_dtype float16: the vector of passage 1234 has values "
                                          r"beyond float16's range \(largest 65504\); keep float32"):
        build_shards(tmp_path, manifest, train_sample=2000, recall_queries=0)
