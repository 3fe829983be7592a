"""The index version contract: one version directory of an index location (pipeline/index/versions.py),
written once by `build_index` or a refresh and read by every retrieval actor.

    manifest.json          IndexManifest below (written last: its presence marks a complete build), with the
                           size and CRC-32 of every other file (pipeline/index/integrity.py)
    passages.arrow         id (int64, = row = FAISS id), title, text: an uncompressed Arrow IPC file, so every
                           actor on a node memory-maps the same pages instead of holding its own copy
    vectors.f32            exact passage vectors, raw float32 [count, dimension], memory-mappable (vectors.f16,
                           raw float16, for an index built with index.vector_dtype float16)
    shard_{s}.faiss        FAISS index over ids [offsets[s], offsets[s + 1])

Format 1 kept the passages in passages.parquet (read into every actor's heap); it is refused with a request
to rebuild rather than read two ways. Format 2 has no file records: it is read with the checks it always had
(vector file size, passage count), and FAISS's own errors on a damaged shard.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.errors import IndexFormatError
from pipeline.index.integrity import file_records, verify_files
from pipeline.index.versions import is_location, resolve_version
from pipeline.storage import storage_errors, write_text_atomically

FORMAT_VERSION = 3
READ_FORMATS = (2, 3)  # 2: the same files without their sizes and checksums in the manifest
MANIFEST = "manifest.json"
PASSAGES = "passages.arrow"
# The stored exact vectors' types -> (file name, numpy type). float16 halves the largest part of an approximate
# index (docs/scaling.md) for a measured loss of recall; vectors leave a shard as float32 either way.
VECTOR_DTYPES = {"float32": ("vectors.f32", np.float32), "float16": ("vectors.f16", np.float16)}
VECTORS = VECTOR_DTYPES["float32"][0]  # what a build or a refresh writes first, whatever it stores
VECTOR_FILES = tuple(name for name, _ in VECTOR_DTYPES.values())


def shard_file(shard: int) -> str:
    return f"shard_{shard}.faiss"


@dataclass
class IndexManifest:
    encoder: str
    pooling: str
    max_length: int
    dimension: int
    metric: str
    count: int
    factory: str
    shard_offsets: list[int]
    format_version: int = FORMAT_VERSION
    # Approximate indexes only: recall@10 of the served search path against exact search, measured at build
    # time, one row per search setting tried: {"nprobe" or "ef_search": value, "recall": r, "queries": n}.
    recall_at_10_vs_exact: list = dataclasses.field(default_factory=list)
    # Which build this is: unique per build, and what it was built from ({"encoder", "weights_sha256", "count",
    # and for a refresh "trained_at_step"}), so two versions are never mistaken for one another.
    build_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    fingerprint: dict = dataclasses.field(default_factory=dict)
    # Format 3: {file name: {"bytes": size, "crc32": checksum}} of every other file of the version.
    files: dict = dataclasses.field(default_factory=dict)
    # How the exact vectors are stored (VECTOR_DTYPES); manifests written before the choice existed hold float32.
    vector_dtype: str = "float32"

    @property
    def vectors_file(self) -> str:
        return VECTOR_DTYPES[self.vector_dtype][0]

    @property
    def num_shards(self) -> int:
        return len(self.shard_offsets) - 1

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Global passage ids [start, end) held by `shard`."""
        return self.shard_offsets[shard], self.shard_offsets[shard + 1]

    def data_files(self) -> list[str]:
        """The files of a version besides the manifest."""
        return [PASSAGES, self.vectors_file] + [shard_file(s) for s in range(self.num_shards)]

    def write(self, directory: Path) -> None:
        """Record the size and checksum of every data file of `directory`, then write manifest.json (atomically:
        a manifest is there whole or not at all, and its presence marks the version complete)."""
        self.format_version = FORMAT_VERSION
        self.files = file_records(directory, self.data_files())
        write_text_atomically(Path(directory) / MANIFEST, json.dumps(dataclasses.asdict(self), indent=2))


def even_shard_offsets(count: int, shards: int) -> list[int]:
    """Split ids 0..count into `shards` contiguous ranges of near-equal size."""
    return [count * s // shards for s in range(shards + 1)]


def read_manifest(directory: str | Path, checksums: list[str] | bool = ()) -> IndexManifest:
    """Read and check an index version's manifest against its files; IndexFormatError says what differs.

    `directory` is a version directory, or an index location (its CURRENT version is read). Every file's size
    is checked; the CRC-32 of the files named in `checksums` (True: all) too (format 3; format 2 records none).
    """
    directory = resolve_version(directory).directory
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing; {directory} is not a complete index directory")
    try:
        with storage_errors(path, "reading"):
            raw = json.loads(path.read_text())
        manifest = IndexManifest(**raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise IndexFormatError(f"{path}: not a valid manifest ({e})") from None
    if manifest.format_version not in READ_FORMATS:
        raise IndexFormatError(
            f"{path}: format_version {manifest.format_version}, this code reads "
            f"{' and '.join(map(str, READ_FORMATS))}; rebuild the index into a new location "
            f"(jobs/build_index.py --index.directory NEW_DIR)"
        )
    if manifest.vector_dtype not in VECTOR_DTYPES:
        raise IndexFormatError(f"{path}: vector_dtype {manifest.vector_dtype!r}, this code reads "
                               f"{' and '.join(VECTOR_DTYPES)}")
    offsets = manifest.shard_offsets
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != manifest.count or sorted(offsets) != offsets:
        raise IndexFormatError(f"{path}: shard_offsets {offsets} do not cover count {manifest.count}")
    for name in manifest.data_files():
        if not (directory / name).is_file():
            raise IndexFormatError(f"{directory / name}: missing (manifest lists {manifest.num_shards} shards)")
    if manifest.format_version >= 3:
        unrecorded = [name for name in manifest.data_files() if name not in manifest.files]
        if unrecorded:
            raise IndexFormatError(f"{path}: no size and checksum recorded for {', '.join(unrecorded)}")
        verify_files(directory, manifest.files, checksums)
    vectors = directory / manifest.vectors_file
    expected = manifest.count * manifest.dimension * np.dtype(VECTOR_DTYPES[manifest.vector_dtype][1]).itemsize
    actual = vectors.stat().st_size
    if actual != expected:
        raise IndexFormatError(
            f"{vectors}: {actual} bytes, manifest says {manifest.count} x {manifest.dimension} "
            f"{manifest.vector_dtype} = {expected} bytes"
        )
    rows = count_passages(directory / PASSAGES)
    if rows != manifest.count:
        raise IndexFormatError(f"{directory / PASSAGES}: {rows} passages, manifest says {manifest.count}")
    return manifest


PASSAGE_SCHEMA = pa.schema([("id", pa.int64()), ("title", pa.string()), ("text", pa.string())])


class PassagesWriter:
    """Streams passages into `directory`/passages.arrow with ids 0, 1, 2, ... in arrival order.

    Rows are buffered into record batches of about `batch_rows`: few, large batches keep a lookup by row
    cheap (each batch is one chunk to search), and a string column's 32-bit offsets cap a batch at 2 GiB of text.
    """

    def __init__(self, directory: str | Path, batch_rows: int = 65_536):
        self._writer = pa.ipc.new_file(str(Path(directory) / PASSAGES), PASSAGE_SCHEMA)
        self._titles: list[str] = []
        self._texts: list[str] = []
        self._batch_rows = batch_rows
        self.count = 0

    def add(self, titles: list[str], texts: list[str]) -> None:
        self._titles.extend(titles)
        self._texts.extend(texts)
        if len(self._titles) >= self._batch_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._titles:
            return
        ids = pa.array(range(self.count, self.count + len(self._titles)), pa.int64())
        self._writer.write_batch(pa.record_batch([ids, pa.array(self._titles, pa.string()),
                                                  pa.array(self._texts, pa.string())], schema=PASSAGE_SCHEMA))
        self.count += len(self._titles)
        self._titles, self._texts = [], []

    def close(self) -> int:
        """Write the rest and the file footer; returns the number of passages written."""
        self._flush()
        self._writer.close()
        return self.count

    def __enter__(self) -> "PassagesWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def count_passages(path: Path) -> int:
    """Rows of a passages.arrow file (reads only its footer and batch headers); IndexFormatError if unreadable."""
    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source)
            return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except pa.ArrowInvalid as e:
        raise IndexFormatError(f"{path}: not an Arrow IPC file ({str(e).splitlines()[0][:120]})") from None


def _version_directory(path: str | Path) -> Path:
    """A location's CURRENT version directory; any other directory as it is (e.g. a version being written)."""
    return resolve_version(path).directory if is_location(path) else Path(path)


def open_passages(directory: str | Path) -> pa.Table:
    """The passages table (id, title, text) memory-mapped, zero-copy: replicas on one node share its pages.
    `directory`: a version directory, or a location (its CURRENT version)."""
    path = _version_directory(directory) / PASSAGES
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def open_vectors(directory: str | Path, manifest: IndexManifest, dtype: str | None = None) -> np.ndarray:
    """The exact vectors as stored (`manifest.vector_dtype`, or the file of `dtype`), memory-mapped read-only:
    replicas on one node share these pages. `directory`: a version directory, or a location (its CURRENT)."""
    name, numpy_type = VECTOR_DTYPES[dtype or manifest.vector_dtype]
    return np.memmap(_version_directory(directory) / name, dtype=numpy_type, mode="r",
                     shape=(manifest.count, manifest.dimension))
