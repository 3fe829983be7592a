"""Knowledge bases with their vectors already computed (a `datasets` folder as use_own_knowledge_dataset.py saves it,
parquet and jsonl with an embeddings column) become an index version without any encoder being loaded: the
encoder named here does not exist, so a build that tried to load it would fail."""

from __future__ import annotations

import json

import datasets
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import IndexConfig, KnowledgeBaseConfig
from pipeline.errors import ConfigError, DataError, IndexFormatError
from pipeline.index.build import build_index
from pipeline.index.manifest import open_passages, open_vectors, read_manifest
from pipeline.retrieval.local import LocalRetriever

NO_SUCH_ENCODER = "/nonexistent/dpr-ctx-encoder"
DIM = 8


def _rows(count: int = 30, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {"title": [f"Doc {i}" if i % 4 else None for i in range(count)],
            "text": [f"passage number {i} about things" for i in range(count)], "embeddings": vectors.tolist()}


def _save_datasets_folder(path, rows: dict, shards: int = 3):
    datasets.Dataset.from_dict(rows).save_to_disk(str(path), num_shards=shards)
    return path


def _assert_index_holds(directory, rows: dict) -> None:
    manifest = read_manifest(directory)
    assert manifest.encoder == NO_SUCH_ENCODER and manifest.dimension == DIM
    assert manifest.count == len(rows["text"]) and manifest.fingerprint["encoder"] == NO_SUCH_ENCODER
    passages = open_passages(directory).to_pydict()
    vectors = open_vectors(directory, manifest)
    by_text = {text: (title or "", np.asarray(v, np.float32))
               for title, text, v in zip(rows["title"], rows["text"], rows["embeddings"])}
    assert passages["text"] == rows["text"]  # every row once, in order (ids = rows), none split or dropped
    for pid, title, text in zip(passages["id"], passages["title"], passages["text"]):
        assert title == by_text[text][0]
        np.testing.assert_array_equal(vectors[pid], by_text[text][1])


def test_a_datasets_folder_builds_without_loading_an_encoder(ray_cluster, tmp_path):
    rows = _rows()
    folder = _save_datasets_folder(tmp_path / "my_knowledge_dataset", rows)
    build_index(KnowledgeBaseConfig(documents=str(folder)),
                IndexConfig(directory=str(tmp_path / "index"), encoder=NO_SUCH_ENCODER, pooling="pooler"))
    _assert_index_holds(tmp_path / "index", rows)
    assert read_manifest(tmp_path / "index").pooling == "pooler"


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_table_with_an_embeddings_column_builds_without_loading_an_encoder(ray_cluster, tmp_path, fmt):
    rows = _rows(25, seed=1)
    table = {"title": rows["title"], "body": rows["text"], "vec": rows["embeddings"]}
    path = tmp_path / f"kb.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table(table), path, row_group_size=7)
    else:
        path.write_text("".join(json.dumps(dict(zip(table, values))) + "\n" for values in zip(*table.values())))
    build_index(KnowledgeBaseConfig(documents=str(path), text_column="body", embeddings_column="vec"),
                IndexConfig(directory=str(tmp_path / "index"), encoder=NO_SUCH_ENCODER, shards=2))
    _assert_index_holds(tmp_path / "index", rows)


def _broken(rows: dict, row: int, vector) -> dict:
    rows = {name: list(values) for name, values in rows.items()}
    rows["embeddings"][row - 1] = vector
    return rows


BAD_VECTORS = [(5, [0.5] * (DIM - 1), "has 7 values, expected 8"), (7, [float("nan")] * DIM, "NaN"),
               (3, None, "is missing")]


@pytest.mark.parametrize("row, vector, says", BAD_VECTORS)
@pytest.mark.parametrize("fmt", ["datasets", "parquet", "jsonl"])
def test_a_bad_vector_is_refused_with_its_row_before_anything_is_written(tmp_path, fmt, row, vector, says):
    rows = _broken(_rows(), row, vector)
    if fmt == "datasets":
        path = _save_datasets_folder(tmp_path / "kb", rows, shards=2)
        kb = KnowledgeBaseConfig(documents=str(path))
    elif fmt == "parquet":
        path = tmp_path / "kb.parquet"
        pq.write_table(pa.table(rows), path, row_group_size=4)
        kb = KnowledgeBaseConfig(documents=str(path), embeddings_column="embeddings")
    else:
        path = tmp_path / "kb.jsonl"
        path.write_text("".join(json.dumps(dict(zip(rows, values))) + "\n" for values in zip(*rows.values())))
        kb = KnowledgeBaseConfig(documents=str(path), embeddings_column="embeddings")
    with pytest.raises(DataError, match=rf"^{path}:{row}: field 'embeddings' .*{says}") as error:
        build_index(kb, IndexConfig(directory=str(tmp_path / "out" / "index"), encoder=NO_SUCH_ENCODER))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_datasets_folder_without_the_embeddings_column_is_refused(tmp_path):
    rows = _rows()
    del rows["embeddings"]
    path = _save_datasets_folder(tmp_path / "kb", rows, shards=1)
    with pytest.raises(DataError, match=rf"^{path}: missing column 'embeddings'; found title, text$"):
        build_index(KnowledgeBaseConfig(documents=str(path)),
                    IndexConfig(directory=str(tmp_path / "index"), encoder=NO_SUCH_ENCODER))
    assert not (tmp_path / "index").exists()


def test_vectors_that_are_not_numbers_are_refused_by_their_type(tmp_path):
    path = tmp_path / "kb.parquet"
    pq.write_table(pa.table({"title": ["a"], "text": ["b"], "embeddings": [["x", "y"]]}), path)
    with pytest.raises(DataError, match=r"column 'embeddings' holds list<element: string>, expected lists of floats"):
        build_index(KnowledgeBaseConfig(documents=str(path), embeddings_column="embeddings"),
                    IndexConfig(directory=str(tmp_path / "index"), encoder=NO_SUCH_ENCODER))


def test_precomputed_vectors_need_the_name_of_their_encoder(tmp_path):
    path = _save_datasets_folder(tmp_path / "kb", _rows(), shards=1)
    with pytest.raises(ConfigError, match=r"^index.encoder: .* holds precomputed vectors; name the encoder"):
        build_index(KnowledgeBaseConfig(documents=str(path)), IndexConfig(directory=str(tmp_path / "index")))


def test_a_csv_cannot_carry_an_embeddings_column(tmp_path):
    path = tmp_path / "kb.csv"
    path.write_text("title,text\na,b\n")
    with pytest.raises(DataError, match=r"a csv file cannot hold the vectors of knowledge_base.embeddings_column"):
        build_index(KnowledgeBaseConfig(documents=str(path), embeddings_column="vec"),
                    IndexConfig(directory=str(tmp_path / "index"), encoder=NO_SUCH_ENCODER))


def _hf_faiss_file(folder, path, metric=faiss.METRIC_INNER_PRODUCT, rows: int | None = None):
    """What use_own_knowledge_dataset.py does: an HNSW index added through `datasets`, saved beside the folder."""
    dataset = datasets.load_from_disk(str(folder))
    if rows is not None:
        dataset = dataset.select(range(rows))
    dataset.add_faiss_index("embeddings", custom_index=faiss.IndexHNSWFlat(DIM, 16, metric))
    dataset.get_index("embeddings").save(str(path))
    return path


def test_the_datasets_own_faiss_file_is_adopted_when_it_matches(ray_cluster, tmp_path):
    rows = _rows(40, seed=2)
    folder = _save_datasets_folder(tmp_path / "my_knowledge_dataset", rows)
    faiss_file = _hf_faiss_file(folder, tmp_path / "my_knowledge_dataset_hnsw_index.faiss")
    manifest = build_index(KnowledgeBaseConfig(documents=str(folder)),
                           IndexConfig(directory=str(tmp_path / "index"), encoder=NO_SUCH_ENCODER, factory="HNSW16",
                                       adopt_faiss=str(faiss_file)))
    version = tmp_path / "index" / "v0001"
    assert (version / "shard_0.faiss").read_bytes() == faiss_file.read_bytes()
    assert manifest.fingerprint["adopted_faiss"] == str(faiss_file) and manifest.recall_at_10_vs_exact
    _assert_index_holds(tmp_path / "index", rows)
    queries = np.asarray(rows["embeddings"][::5], np.float32)
    assert LocalRetriever(tmp_path / "index").retrieve(queries, 3).ids[:, 0].tolist() == list(range(0, 40, 5))


@pytest.mark.parametrize("metric, rows, says", [(faiss.METRIC_L2, None, "30 vectors of 8 dims searched by L2"),
                                               (faiss.METRIC_INNER_PRODUCT, 29, "29 vectors of 8 dims")])
def test_a_faiss_file_that_does_not_match_the_passages_is_refused(tmp_path, metric, rows, says):
    folder = _save_datasets_folder(tmp_path / "kb", _rows(), shards=1)
    faiss_file = _hf_faiss_file(folder, tmp_path / "kb.faiss", metric, rows)
    with pytest.raises(IndexFormatError, match=rf"^{faiss_file}: {says}.*; {folder} holds 30 of 8 dims"):
        build_index(KnowledgeBaseConfig(documents=str(folder)),
                    IndexConfig(directory=str(tmp_path / "index"), encoder=NO_SUCH_ENCODER,
                                adopt_faiss=str(faiss_file)))
    assert not (tmp_path / "index").exists()


def test_only_precomputed_vectors_adopt_a_faiss_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"title": "a", "text": "b"}\n')
    with pytest.raises(ConfigError, match=r"^index.adopt_faiss: a .faiss file is adopted only over precomputed"):
        build_index(KnowledgeBaseConfig(documents=str(path)),
                    IndexConfig(directory=str(tmp_path / "index"), adopt_faiss=str(tmp_path / "x.faiss")))
