"""Reading the tabular files users bring (documents, QA examples): jsonl, csv, tsv, parquet.

Two readers over the same files: `read_dataset` gives the Ray Dataset the
pipeline streams through; `iter_checked_rows` is a cheap streaming pass on the
driver that knows row numbers, so a bad row is reported as `file:row field`
before any distributed work starts. Neither materialises the whole file.

Row numbers count from 1. For JSON Lines they are line numbers (blank lines
count, as an editor shows them): that file is read line by line with `json`,
which names the line of a syntax error and accepts a field whose type changes
from row to row (pyarrow's reader reports either as an offset in a block, or
refuses the whole file); the row validators then say what a wrong value is.
For CSV/TSV the header is not a row; for Parquet rows are table rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
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


def check_not_empty(path: str | Path, text: bool = True) -> None:
    """DataError for a file of 0 bytes or, for a text format, of nothing but whitespace.

    Reads only up to the first non-whitespace byte, so it is cheap for any real file.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    if text:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                if chunk.strip():
                    return
        raise DataError(f"{path}: only blank lines, no rows")


def _csv_options(fmt: str, columns: list[str]):
    parse = pa_csv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True)
    # Read the columns we need as strings: pyarrow would otherwise infer numbers from a title like "1984".
    convert = pa_csv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=False)
    return pa_csv.ReadOptions(block_size=_BLOCK_BYTES), parse, convert


def _arrow_batches(path: Path, fmt: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    if fmt == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=8192)
    else:
        read, parse, convert = _csv_options(fmt, columns)
        yield from pa_csv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)


def _missing_column(path: Path, column: str, found: list[str]) -> DataError:
    return DataError(f"{path}: missing column {column!r}; found {', '.join(found) or 'no columns'}")


def _iter_json_lines(path: Path, columns: list[str], optional: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, {column: value}) per non-blank line; a required column absent from the first object is a
    missing column, absent from a later one a missing value (None)."""
    first = True
    with open(path, "rb") as lines:  # bytes, decoded line by line: a UTF-8 error then knows its line
        for line_no, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_no}: text is not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg}: column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object per line, got {type(obj).__name__}")
            if first:
                missing = [c for c in columns if c not in obj]
                if missing:
                    raise _missing_column(path, missing[0], list(obj))
                first = False
            yield line_no, {c: obj.get(c) for c in columns + optional}


def _iter_arrow_rows(path: Path, fmt: str, columns: list[str], optional: list[str]) -> Iterator[tuple[int, dict]]:
    row = 0
    try:
        for batch in _arrow_batches(path, fmt, columns + optional):
            missing = [c for c in columns if c not in batch.schema.names]
            if missing:
                raise _missing_column(path, missing[0], batch.schema.names)
            present = columns + [c for c in optional if c in batch.schema.names]
            values = {c: batch.column(c).to_pylist() for c in present}
            for i in range(batch.num_rows):
                row += 1
                yield row, {c: values[c][i] if c in values else None for c in columns + optional}
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0]
        if "utf8" in reason.lower() or "utf-8" in reason.lower() or isinstance(e, UnicodeDecodeError):
            raise DataError(f"{path}: text is not valid UTF-8 near row {row + 1} ({reason})") from None
        raise DataError(f"{path}: cannot parse near row {row + 1} ({reason})") from None


def iter_checked_rows(path: str | Path, columns: list[str],
                      optional: list[str] | tuple = ()) -> Iterator[tuple[int, dict]]:
    """Stream `(row_number, {column: value})` for the required `columns` and the `optional` ones (None where a
    file has no such column). Raises DataError naming the file (and row or line where there is one) for an empty
    file, a missing column, a line that is not JSON, undecodable (non-UTF-8) bytes, or no rows at all."""
    path = Path(path)
    fmt = table_format(path)
    check_not_empty(path, text=fmt != "parquet")
    columns, optional = list(columns), [c for c in optional if c not in columns]
    if fmt == "jsonl":
        rows = _iter_json_lines(path, columns, optional)
    else:
        rows = _iter_arrow_rows(path, fmt, columns, optional)
    seen = 0
    for seen, values in rows:
        yield seen, values
    if seen == 0:
        raise DataError(f"{path}: no rows")


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


def describe_value(value) -> str:
    """'int 42', "list ['a', 3]" ...: a wrong value as an error message shows it (type, then a short repr)."""
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def require_text(value, path: Path | str, row: int, field: str) -> str:
    """The stripped string value of a required text field, or DataError naming file:row and field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path}:{row}: field {field!r} is missing or empty")
    if not isinstance(value, str):
        raise DataError(f"{path}:{row}: field {field!r} must be a string, got {describe_value(value)}")
    return value.strip()
