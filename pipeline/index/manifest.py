"""The index directory contract, written once by `build_index` and read by every retrieval actor.

    manifest.json          IndexManifest below (written last: its presence marks a complete build)
    passages.parquet       id (int64, = row = FAISS id), title, text
    vectors.f32            exact passage vectors, raw float32 [count, dimension], memory-mappable
    shard_{s}.faiss        FAISS index over ids [offsets[s], offsets[s + 1])
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import IndexFormatError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PASSAGES = "passages.parquet"
VECTORS = "vectors.f32"


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

    @property
    def num_shards(self) -> int:
        return len(self.shard_offsets) - 1

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Global passage ids [start, end) held by `shard`."""
        return self.shard_offsets[shard], self.shard_offsets[shard + 1]

    def write(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(json.dumps(dataclasses.asdict(self), indent=2))


def even_shard_offsets(count: int, shards: int) -> list[int]:
    """Split ids 0..count into `shards` contiguous ranges of near-equal size."""
    return [count * s // shards for s in range(shards + 1)]


def read_manifest(directory: str | Path) -> IndexManifest:
    """Read and check an index directory's manifest against its files; IndexFormatError says what differs."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexFormatError(f"{directory}: index directory not found (build it with jobs/build_index.py)")
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing; {directory} is not a complete index directory")
    try:
        raw = json.loads(path.read_text())
        manifest = IndexManifest(**raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise IndexFormatError(f"{path}: not a valid manifest ({e})") from None
    if manifest.format_version != FORMAT_VERSION:
        raise IndexFormatError(f"{path}: format_version {manifest.format_version}, this code reads {FORMAT_VERSION}")
    offsets = manifest.shard_offsets
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != manifest.count or sorted(offsets) != offsets:
        raise IndexFormatError(f"{path}: shard_offsets {offsets} do not cover count {manifest.count}")
    for name in [PASSAGES, VECTORS] + [shard_file(s) for s in range(manifest.num_shards)]:
        if not (directory / name).is_file():
            raise IndexFormatError(f"{directory / name}: missing (manifest lists {manifest.num_shards} shards)")
    expected = manifest.count * manifest.dimension * 4
    actual = (directory / VECTORS).stat().st_size
    if actual != expected:
        raise IndexFormatError(
            f"{directory / VECTORS}: {actual} bytes, manifest says {manifest.count} x {manifest.dimension} float32"
            f" = {expected} bytes"
        )
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(directory / PASSAGES).metadata.num_rows
    if rows != manifest.count:
        raise IndexFormatError(f"{directory / PASSAGES}: {rows} passages, manifest says {manifest.count}")
    return manifest


def open_vectors(directory: str | Path, manifest: IndexManifest) -> np.ndarray:
    """The exact vectors, memory-mapped read-only: replicas on one node share these pages."""
    return np.memmap(Path(directory) / VECTORS, dtype=np.float32, mode="r", shape=(manifest.count, manifest.dimension))
