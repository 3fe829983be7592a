"""Reading the tabular files users bring (documents, QA examples): jsonl, csv, tsv, parquet.

Two readers over the same files: `read_dataset` gives the Ray Dataset the
pipeline streams through; `iter_checked_rows` is a cheap streaming pass on the
driver that knows row numbers, so a bad row is reported as `file:row field`
before any distributed work starts. Neither materialises the whole file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipeline.errors import DataError

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
_BLOCK_BYTES = 1 << 22


def table_format(path: str | Path) -> str:
    """The format of a tabular file from its extension; DataError if missing or unsupported."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported extension {path.suffix!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def _csv_options(fmt: str, columns: list[str]):
    parse = pa_csv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True)
    # Read the columns we need as strings: pyarrow would otherwise infer numbers from a title like "1984".
    convert = pa_csv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=False)
    return pa_csv.ReadOptions(block_size=_BLOCK_BYTES), parse, convert


def _batches(path: Path, fmt: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    if fmt == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=8192)
    elif fmt == "jsonl":
        yield from pa_json.open_json(path, read_options=pa_json.ReadOptions(block_size=_BLOCK_BYTES))
    else:
        read, parse, convert = _csv_options(fmt, columns)
        yield from pa_csv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)


def iter_checked_rows(path: str | Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """Stream `(row_number, {column: value})` for the given columns (row numbers from 1).

    Raises DataError naming the file for a missing column or undecodable (non-UTF-8) bytes.
    """
    path = Path(path)
    fmt = table_format(path)
    row = 0
    try:
        for batch in _batches(path, fmt, columns):
            missing = [c for c in columns if c not in batch.schema.names]
            if missing:
                raise DataError(
                    f"{path}: missing column {missing[0]!r}; found {', '.join(batch.schema.names) or 'no columns'}"
                )
            values = {c: batch.column(c).to_pylist() for c in columns}
            for i in range(batch.num_rows):
                row += 1
                yield row, {c: values[c][i] for c in columns}
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0]
        if "utf8" in reason.lower() or "utf-8" in reason.lower() or isinstance(e, UnicodeDecodeError):
            raise DataError(f"{path}: text is not valid UTF-8 near row {row + 1} ({reason})") from None
        raise DataError(f"{path}: cannot parse near row {row + 1} ({reason})") from None
    if row == 0:
        raise DataError(f"{path}: no rows")


def column_names(path: str | Path) -> list[str]:
    """The columns of a tabular file, read from its first block only."""
    path = Path(path)
    batch = next(_batches(path, table_format(path), []), None)
    return [] if batch is None else list(batch.schema.names)


def read_dataset(path: str | Path, columns: list[str]):
    """A Ray Dataset of the given columns of a tabular file (all as read; validate first)."""
    import ray.data

    path = Path(path)
    fmt = table_format(path)
    if fmt == "parquet":
        ds = ray.data.read_parquet(str(path))
    elif fmt == "jsonl":
        ds = ray.data.read_json(str(path), lines=True)
    else:
        read, parse, convert = _csv_options(fmt, columns)
        ds = ray.data.read_csv(str(path), read_options=read, parse_options=parse, convert_options=convert)
    return ds.select_columns(columns)


def require_text(value, path: Path | str, row: int, field: str) -> str:
    """The stripped string value of a required text field, or DataError naming file:row and field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path}:{row}: field {field!r} is missing or empty")
    if not isinstance(value, str):
        raise DataError(f"{path}:{row}: field {field!r} must be text, got {type(value).__name__}")
    return value.strip()
