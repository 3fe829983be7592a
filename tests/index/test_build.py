"""BUILD: documents -> passages -> embeddings -> index directory, and the errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs import build_index as build_index_job
from pipeline.errors import ConfigError, DataError, IndexFormatError
from pipeline.index.build import split_into_passages
from pipeline.index.manifest import PASSAGES, open_passages, open_vectors, read_manifest
from tests.conftest import write_corpus


def _build(documents, directory, *extra):
    return build_index_job.main(["--knowledge_base.documents", str(documents), "--index.directory", str(directory),
                                 "--index.embed_batch_size", "16", *extra])


def test_passages_have_at_most_the_word_limit():
    text = " ".join(f"w{i}" for i in range(250))
    passages = split_into_passages(text, 100)
    assert [len(p.split()) for p in passages] == [100, 100, 50]
    assert " ".join(passages) == text


def test_built_index_matches_its_manifest_and_documents(flat_index, corpus_file):
    manifest = read_manifest(flat_index)
    table = open_passages(flat_index)
    docs = [json.loads(line) for line in corpus_file.read_text().splitlines()]
    expected_passages = sum(len(split_into_passages(d["text"], 100)) for d in docs)
    assert manifest.count == table.num_rows == expected_passages
    assert table.column("id").to_pylist() == list(range(manifest.count))
    assert max(len(t.split()) for t in table.column("text").to_pylist()) <= 100
    assert set(table.column("title").to_pylist()) == {d["title"] for d in docs}
    assert manifest.dimension == 384 and manifest.num_shards == 2 and manifest.pooling == "mean"
    vectors = open_vectors(flat_index, manifest)
    norms = np.linalg.norm(vectors, axis=1)
    assert vectors.shape == (manifest.count, 384) and np.all(norms > 0)


@pytest.mark.slow  # builds indexes of its own through Ray Data (or a torch process group)
@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_every_document_format_builds_the_same_passages(ray_cluster, tmp_path, fmt):
    import pandas as pd

    rows = write_corpus(tmp_path / "docs.jsonl", documents=6, seed=3)
    path = tmp_path / f"docs.{fmt}"
    frame = pd.DataFrame(rows).rename(columns={"title": "name", "text": "body"})
    if fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if fmt == "tsv" else ",", index=False)
    out = tmp_path / "index"
    assert _build(path, out, "--knowledge_base.title_column", "name", "--knowledge_base.text_column", "body") == 0
    texts = sorted(open_passages(out).column("text").to_pylist())
    assert texts == sorted(p for r in rows for p in split_into_passages(r["text"], 100))


@pytest.mark.slow  # builds indexes of its own through Ray Data (or a torch process group)
@pytest.mark.parametrize("factory", ["HNSW16", "IVF4,PQ8x4"])
def test_approximate_index_types_build_and_load(ray_cluster, corpus_file, tmp_path, factory):
    from pipeline.retrieval.local import LocalRetriever

    out = tmp_path / "index"
    assert _build(corpus_file, out, "--index.factory", factory, "--index.train_sample", "1000") == 0
    manifest = read_manifest(out)
    assert manifest.factory == factory
    # Recall of the served search against exact search, per setting of the index's knob, from the build.
    knob = "ef_search" if factory.startswith("HNSW") else "nprobe"
    assert [row[knob] for row in manifest.recall_at_10_vs_exact] == (
        [16, 32, 64, 128, 256] if knob == "ef_search" else [1, 4])
    assert all(0 < row["recall"] <= 1 and row["queries"] == min(200, manifest.count)
               for row in manifest.recall_at_10_vs_exact)
    vectors = open_vectors(out, manifest)
    result = LocalRetriever(out).retrieve(np.array(vectors[:4]), 3)
    assert result.ids.shape == (4, 3) and result.vectors.shape == (4, 3, 384)
    assert np.all((result.ids >= 0) & (result.ids < manifest.count))
    assert np.all(np.diff(result.scores, axis=1) <= 1e-5)
    np.testing.assert_allclose(result.vectors, np.asarray(vectors)[result.ids])  # exact vectors, even for PQ
    if factory.startswith("HNSW"):  # a graph this small should find the exact top hit
        exact_top = np.argmax(np.asarray(vectors[:4]) @ np.asarray(vectors).T, axis=1)
        assert np.mean(result.ids[:, 0] == exact_top) >= 0.75


def test_an_existing_location_is_refused_without_overwrite(flat_index, corpus_file):
    before = (flat_index / "CURRENT").read_text(), sorted(p.name for p in flat_index.iterdir())
    with pytest.raises(IndexFormatError, match=r"already holds index version v0001 \(CURRENT\); pass "
                                               r"--index.overwrite true to build a new version beside it"):
        _build(corpus_file, flat_index)
    assert ((flat_index / "CURRENT").read_text(), sorted(p.name for p in flat_index.iterdir())) == before


@pytest.mark.slow  # builds indexes of its own through Ray Data (or a torch process group)
def test_overwrite_builds_a_new_current_version_and_removes_unserved_ones(ray_cluster, tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_corpus(first, documents=4, seed=1)
    write_corpus(second, documents=7, seed=2)
    out = tmp_path / "index"
    assert _build(first, out) == 0
    first_build = read_manifest(out).build_id
    assert _build(second, out, "--index.overwrite", "true") == 0
    manifest = read_manifest(out)
    assert (out / "CURRENT").read_text().strip() == "v0002" and manifest.build_id != first_build
    assert manifest.count == sum(len(split_into_passages(json.loads(line)["text"], 100))
                                 for line in second.read_text().splitlines())
    assert manifest.fingerprint["count"] == manifest.count and len(manifest.fingerprint["weights_sha256"]) == 64
    # v0001 is served by no group, so it is gone; nothing half-written is left behind.
    assert sorted(p.name for p in out.iterdir()) == ["CURRENT", "v0002"]


@pytest.mark.parametrize("overwrite", ["false", "true"])
def test_a_directory_that_is_not_an_index_is_never_written_into(ray_cluster, corpus_file, tmp_path, overwrite):
    out = tmp_path / "my_project"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(IndexFormatError, match=r"my_project: exists and is not an index location \(no CURRENT\); "
                                               r"refusing to write into it"):
        _build(corpus_file, out, "--index.overwrite", overwrite)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def _assert_nothing_written(tmp_path, out):
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".index")] == []


@pytest.mark.parametrize("content,expected", [
    ('{"title": "a", "text": "fine"}\n{"title": "b", "text": "  "}\n',
     r"docs.jsonl:2: field 'text' is missing or empty"),
    ('{"title": "a", "text": "fine"}\n{"title": "b"}\n', r"docs.jsonl:2: field 'text' is missing or empty"),
    ('{"title": "a", "body": "fine"}\n', r"docs.jsonl: missing column 'text'"),
])
def test_bad_documents_name_file_row_and_field(ray_cluster, tmp_path, content, expected):
    path = tmp_path / "docs.jsonl"
    path.write_text(content)
    out = tmp_path / "index"
    with pytest.raises(DataError, match=expected):
        _build(path, out)
    _assert_nothing_written(tmp_path, out)


def test_non_utf8_documents_are_refused(ray_cluster, tmp_path):
    path = tmp_path / "docs.csv"
    path.write_bytes(b"title,text\nok,fine words\nbad,caf\xe9 \xff\xfe\n")
    out = tmp_path / "index"
    with pytest.raises(DataError, match=r"docs.csv: text is not valid UTF-8"):
        _build(path, out)
    _assert_nothing_written(tmp_path, out)


def test_missing_documents_file(ray_cluster, tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl: file not found"):
        _build(tmp_path / "nope.jsonl", tmp_path / "index")


def test_unknown_factory_string_fails_before_any_work(ray_cluster, corpus_file, tmp_path):
    out = tmp_path / "index"
    with pytest.raises(ConfigError, match=r"index.factory: FAISS does not accept 'NotAnIndex9'"):
        _build(corpus_file, out, "--index.factory", "NotAnIndex9")
    _assert_nothing_written(tmp_path, out)


@pytest.mark.slow  # builds indexes of its own through Ray Data (or a torch process group)
def test_index_that_cannot_be_trained_leaves_nothing(ray_cluster, corpus_file, tmp_path):
    out = tmp_path / "index"
    with pytest.raises(ConfigError, match=r"IVF4096,Flat.*training on \d+ vectors failed"):
        _build(corpus_file, out, "--index.factory", "IVF4096,Flat")
    _assert_nothing_written(tmp_path, out)


def test_manifest_that_disagrees_with_files_is_refused(flat_index, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(flat_index / "v0001", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["count"] += 1
    manifest["shard_offsets"][-1] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=r"vectors.f32: \d+ bytes, manifest says \d+ x 384"):
        read_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match=r"index: no CURRENT pointer; not an index location"):
        read_manifest(copy)  # without its manifest a version directory is just a directory


def test_exact_index_records_no_recall(flat_index):
    assert read_manifest(flat_index).recall_at_10_vs_exact == []


def test_index_of_the_previous_format_asks_for_a_rebuild(flat_index, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(flat_index / "v0001", old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError,
                       match=r"format_version 1, this code reads 2 and 3; rebuild the index into a new location"):
        read_manifest(old)


def test_unreadable_passages_file_is_refused(flat_index, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(flat_index / "v0001", copy)
    # Damaged in place, its size kept (the manifest's size check would name a file cut short first).
    (copy / PASSAGES).write_bytes(b"x" * (copy / PASSAGES).stat().st_size)
    with pytest.raises(IndexFormatError, match=r"passages.arrow: not an Arrow IPC file"):
        read_manifest(copy)


def test_missing_index_directory(tmp_path):
    with pytest.raises(IndexFormatError, match=r"nowhere: index location not found \(build it with"):
        read_manifest(tmp_path / "nowhere")
