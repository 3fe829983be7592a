"""Nulls and wrong types in the files a user brings: refused (or, for a title, read as empty) before any work."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import DataConfig, IndexConfig, KnowledgeBaseConfig
from pipeline.errors import DataError
from pipeline.index.build import build_index, check_documents
from pipeline.index.manifest import open_passages
from pipeline.train.qa_data import check_qa_file

ROWS = [{"title": "Alpha", "text": "river stone harbor lantern"},
        {"title": None, "text": "copper violin falcon ember quartz"},
        {"title": "Gamma", "text": "willow summit canyon tide"}]


def write_documents(path, rows):
    """`rows` as JSON Lines, CSV or Parquet by `path`'s extension (None: an empty CSV cell / a Parquet null)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        path.write_text("title,text\n" + "".join(f"{r['title'] or ''},{r['text'] or ''}\n" for r in rows))
    else:
        pq.write_table(pa.table({"title": pa.array([r["title"] for r in rows], pa.string()),
                                 "text": pa.array([r["text"] for r in rows], pa.string())}), path)
    return path


@pytest.mark.slow  # builds indexes of its own through Ray Data (or a torch process group)
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_null_title_is_built_as_an_empty_title(ray_cluster, tmp_path, suffix):
    # Null titles first (a reader may type the first block's column from them) and between text titles.
    rows = [{"title": None, "text": "river stone harbor"}, *ROWS]
    documents = write_documents(tmp_path / f"docs{suffix}", rows)
    build_index(KnowledgeBaseConfig(documents=str(documents)),
                IndexConfig(directory=str(tmp_path / "index"), embed_batch_size=8))
    titles = open_passages(tmp_path / "index").column("title")
    assert titles.null_count == 0
    assert sorted(titles.to_pylist()) == ["", "", "Alpha", "Gamma"]


def test_a_null_title_in_a_csv_is_an_empty_title(tmp_path):
    documents = write_documents(tmp_path / "docs.csv", ROWS)
    assert check_documents(KnowledgeBaseConfig(documents=str(documents))) == 3


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_null_text_is_a_row_error_naming_file_and_row(tmp_path, suffix):
    rows = [dict(ROWS[0]), {"title": "Beta", "text": None}, dict(ROWS[2])]
    documents = write_documents(tmp_path / f"docs{suffix}", rows)
    with pytest.raises(DataError, match=rf"docs\{suffix}:2: field 'text' is missing or empty"):
        check_documents(KnowledgeBaseConfig(documents=str(documents)))


@pytest.mark.parametrize("value", [7, ["a"], {"x": 1}, True])
def test_a_title_of_the_wrong_type_is_a_row_error(tmp_path, value):
    rows = [dict(ROWS[0]), {"title": value, "text": "ember"}]
    documents = write_documents(tmp_path / "docs.jsonl", rows)
    with pytest.raises(DataError, match=r"docs\.jsonl:2: field 'title' must be text"):
        check_documents(KnowledgeBaseConfig(documents=str(documents)))


def test_parquet_columns_of_the_wrong_type_are_row_errors(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"title": ["a", "b"], "text": pa.array([1, 2], pa.int64())}), path)
    with pytest.raises(DataError, match=r"docs\.parquet:1: field 'text' must be a string, got int 1"):
        check_documents(KnowledgeBaseConfig(documents=str(path)))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_null_question_or_answers_in_a_qa_file_name_file_and_row(tmp_path, suffix):
    rows = [{"question": "q1", "answers": ["a1"]}, {"question": None, "answers": ["a2"]},
            {"question": "q3", "answers": None}]
    path = tmp_path / f"qa{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.table({"question": pa.array([r["question"] for r in rows], pa.string()),
                                 "answers": pa.array([r["answers"] for r in rows], pa.list_(pa.string()))}), path)
    with pytest.raises(DataError, match=rf"qa\{suffix}:2: field 'question' is missing or empty"):
        check_qa_file(path, DataConfig())
    report = check_qa_file(path, DataConfig(skip_invalid=True))
    assert (report.valid, report.skipped) == (1, 2)


def test_null_evidence_in_a_qa_file_is_no_evidence(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "q", "answers": ["a"], "evidence": None}) + "\n")
    assert check_qa_file(path, DataConfig()).valid == 1
