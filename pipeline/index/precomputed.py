"""Knowledge bases whose passage vectors are already computed: a `datasets` folder (`Dataset.save_to_disk`, the
layout Hugging Face's use_own_knowledge_dataset.py writes: title, text, embeddings) or a .parquet/.jsonl table with
an embeddings column (`knowledge_base.embeddings_column`). Their rows are passages as they stand (no splitting:
each vector belongs to its row) and no encoder is loaded.

As for documents, a driver pass streams the rows once and refuses the first bad one (`file:row`) before anything
is written; the build then streams them again through Ray Data. Neither pass holds more than a batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from ray.data.datasource import FileBasedDatasource

from pipeline.config import KnowledgeBaseConfig
from pipeline.errors import DataError, IndexFormatError
from pipeline.table_files import (
    describe_value,
    iter_checked_rows,
    read_dataset,
    require_text,
    table_format,
)

DATASETS_STATE = "state.json"  # what Dataset.save_to_disk writes beside its .arrow files
DATASETS_EMBEDDINGS = "embeddings"  # the column use_own_knowledge_dataset.py writes


@dataclass(frozen=True)
class EmbeddedSource:
    path: Path
    kind: str  # "datasets", "parquet" or "jsonl"
    title: str
    text: str
    vectors: str  # the embeddings column

    def arrow_files(self) -> list[Path]:
        """A datasets folder's Arrow files in row order (state.json lists them)."""
        state = json.loads((self.path / DATASETS_STATE).read_text())
        return [self.path / entry["filename"] for entry in state["_data_files"]]


def is_datasets_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / DATASETS_STATE).is_file()


def embedded_source(kb: KnowledgeBaseConfig) -> EmbeddedSource | None:
    """Where `kb` holds precomputed vectors, the source that reads them; None for documents to embed."""
    path = Path(kb.documents)
    if is_datasets_folder(path):
        return EmbeddedSource(path, "datasets", kb.title_column, kb.text_column,
                              kb.embeddings_column or DATASETS_EMBEDDINGS)
    if not kb.embeddings_column:
        return None
    kind = table_format(path)
    if kind not in ("parquet", "jsonl"):
        raise DataError(f"{path}: a {kind} file cannot hold the vectors of knowledge_base.embeddings_column; "
                        f"use .parquet or .jsonl")
    return EmbeddedSource(path, kind, kb.title_column, kb.text_column, kb.embeddings_column)


def check_embedded_rows(source: EmbeddedSource) -> tuple[int, int]:
    """(rows, dimension) after one streaming pass; DataError naming file:row for a missing or empty text, a title
    that is not text, or a vector that is missing, not floats, of another length than the first row's, or NaN."""
    count, dimension = 0, None
    if source.kind == "jsonl":
        for row, values in iter_checked_rows(source.path, [source.title, source.text, source.vectors]):
            _check_text_row(source, row, values)
            dimension = len(_vector_of(values[source.vectors], source, row, dimension))
            count = row
        return count, dimension
    for first_row, batch in _arrow_batches(source):
        _check_text_batch(source, first_row, batch)
        dimension = _check_vector_batch(source, first_row, batch.column(source.vectors), dimension)
        count = first_row + batch.num_rows - 1
    if count == 0:
        raise DataError(f"{source.path}: no rows")
    return count, dimension


def _arrow_batches(source: EmbeddedSource) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(number of the batch's first row, batch) over a datasets folder's files or a parquet file."""
    columns = [source.title, source.text, source.vectors]
    if source.kind == "datasets":
        readers = (pa.ipc.open_stream(pa.memory_map(str(path))) for path in source.arrow_files())
    else:
        readers = [pq.ParquetFile(source.path).iter_batches(batch_size=8192)]
    row = 1
    for reader in readers:
        for batch in reader:
            missing = [c for c in columns if c not in batch.schema.names]
            if missing:
                raise DataError(f"{source.path}: missing column {missing[0]!r}; found {', '.join(batch.schema.names)}")
            yield row, batch
            row += batch.num_rows


def _check_text_row(source: EmbeddedSource, row: int, values: dict) -> None:
    require_text(values[source.text], source.path, row, source.text)
    title = values[source.title]
    if title is not None and not isinstance(title, str):
        raise DataError(f"{source.path}:{row}: field {source.title!r} must be text, got {describe_value(title)}")


def _vector_of(value, source: EmbeddedSource, row: int, dimension: int | None) -> np.ndarray:
    where = f"{source.path}:{row}: field {source.vectors!r}"
    if value is None:
        raise DataError(f"{where} is missing (no vector)")
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise DataError(f"{where} must be a list of numbers, got {describe_value(value)}")
    vector = np.asarray(value, dtype=np.float32)
    if dimension is not None and len(vector) != dimension:
        raise DataError(f"{where} has {len(vector)} values, expected {dimension} (the first row's)")
    if len(vector) == 0 or not np.isfinite(vector).all():
        raise DataError(f"{where} is empty or holds NaN or infinity")
    return vector


def _check_text_batch(source: EmbeddedSource, first_row: int, batch: pa.RecordBatch) -> None:
    text, title = batch.column(source.text), batch.column(source.title)
    for name, column in ((source.text, text), (source.title, title)):
        kind = column.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            raise DataError(f"{source.path}: column {name!r} holds {column.type}, expected text")
    empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), True)
    empty = empty.to_numpy(zero_copy_only=False)
    if empty.any():
        row = first_row + int(np.flatnonzero(empty)[0])
        raise DataError(f"{source.path}:{row}: field {source.text!r} is missing or empty")


def _check_vector_batch(source: EmbeddedSource, first_row: int, column: pa.Array, dimension: int | None) -> int:
    """The dimension (the first row's), after checking every row of `column` against it."""
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) \
            or not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise DataError(f"{source.path}: column {source.vectors!r} holds {kind}, expected lists of floats")
    lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False)
    if dimension is None:
        dimension = int(lengths[0])
    bad = np.flatnonzero(lengths != dimension)
    if len(bad):
        row, length = first_row + int(bad[0]), int(lengths[bad[0]])
        found = ("is missing (no vector)" if length < 0
                 else f"has {length} values, expected {dimension} (the first row's)")
        raise DataError(f"{source.path}:{row}: field {source.vectors!r} {found}")
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)  # a null value reads as NaN
    finite = (np.isfinite(values.reshape(len(column), dimension)).all(axis=1) if dimension
              else np.zeros(len(column), bool))
    if not finite.all():
        row = first_row + int(np.flatnonzero(~finite)[0])
        raise DataError(f"{source.path}:{row}: field {source.vectors!r} is empty or holds NaN or infinity")
    return dimension


class ArrowStreamDatasource(FileBasedDatasource):
    """Ray Data reader of Arrow IPC stream files (what `Dataset.save_to_disk` writes), one record batch at a time;
    read_parquet and read_arrow-style readers expect Parquet or the Arrow file format."""

    def _read_stream(self, f: pa.NativeFile, path: str):
        for batch in pa.ipc.open_stream(f):
            yield pa.Table.from_batches([batch])


def read_embedded_dataset(source: EmbeddedSource):
    """A Ray Dataset of {title, text, vector: float32[d]} rows of a checked source (titles: text, null as "")."""
    columns = [source.title, source.text, source.vectors]
    if source.kind == "datasets":
        ds = ray.data.read_datasource(ArrowStreamDatasource([str(p) for p in source.arrow_files()]))
        ds = ds.select_columns(columns)
    else:
        ds = read_dataset(source.path, columns)
    ds = ds.map_batches(_passage_batch, fn_kwargs={"columns": columns}, batch_format="pyarrow")
    ds.context.execution_options.preserve_order = True  # passage ids = the source's rows, as its .faiss numbers them
    return ds


def check_adoptable(path: str | Path, source: EmbeddedSource, count: int, dimension: int) -> None:
    """IndexFormatError unless `path` is a FAISS index of `count` vectors of `dimension` searched by inner product
    (the checked rows of `source`)."""
    if not Path(path).is_file():
        raise IndexFormatError(f"{path}: file not found (index.adopt_faiss)")
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as e:
        raise IndexFormatError(f"{path}: not a readable FAISS index ({str(e).strip().splitlines()[-1][:160]})") from None
    metric = {faiss.METRIC_INNER_PRODUCT: "inner product", faiss.METRIC_L2: "L2"}.get(index.metric_type, "another metric")
    if (index.ntotal, index.d, metric) != (count, dimension, "inner product"):
        raise IndexFormatError(f"{path}: {index.ntotal} vectors of {index.d} dims searched by {metric}; {source.path} "
                               f"holds {count} of {dimension} dims, to be searched by inner product")


def _passage_batch(batch: pa.Table, columns: list[str]) -> dict:
    title, text, vectors = (batch.column(c).combine_chunks() for c in columns)
    flat = pc.list_flatten(vectors).to_numpy(zero_copy_only=False)
    return {"title": np.array([t if isinstance(t, str) else "" for t in title.to_pylist()], dtype=object),
            "text": np.array(text.to_pylist(), dtype=object),
            "vector": np.ascontiguousarray(flat, dtype=np.float32).reshape(len(batch), -1)}
