"""A damaged index file (cut short, bytes changed) is named in one line before FAISS reads it, and a group
started on it fails at once with that line, leaving no replica behind."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from pipeline.config import RetrievalConfig
from pipeline.errors import IndexFormatError
from pipeline.index.integrity import file_checksum, verify_files
from pipeline.index.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    PASSAGES,
    VECTORS,
    read_manifest,
)
from pipeline.retrieval.group import start_retrieval_group
from pipeline.retrieval.group_record import list_members
from pipeline.retrieval.shard import ShardSearcher
from tests.conftest import TEST_NAMESPACE


@pytest.fixture
def version(flat_index, tmp_path):
    """A copy of the test index's version directory, free to damage."""
    return shutil.copytree(flat_index / "v0001", tmp_path / "v0001")


def flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def cut_short(path, missing: int = 100) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - missing)


def test_the_manifest_records_every_files_size_and_checksum(version):
    manifest = read_manifest(version, checksums=True)
    assert manifest.format_version == FORMAT_VERSION == 3
    assert set(manifest.files) == {PASSAGES, VECTORS, "shard_0.faiss", "shard_1.faiss"}
    for name, record in manifest.files.items():
        assert record == {"bytes": (version / name).stat().st_size, "crc32": file_checksum(version / name)}


def test_a_shard_cut_short_is_named_on_every_load(version):
    cut_short(version / "shard_1.faiss")
    with pytest.raises(IndexFormatError, match=r"shard_1\.faiss: \d+ bytes, manifest says \d+ \(cut short"):
        read_manifest(version)  # sizes only: what the driver checks before starting any actor


def test_changed_bytes_in_a_shard_are_named_before_faiss_reads_it(version):
    flip_byte(version / "shard_0.faiss", 40)  # inside FAISS's header: read_index would misread it
    read_manifest(version)  # the size is right
    with pytest.raises(IndexFormatError, match=r"shard_0\.faiss: damaged \(crc32 [0-9a-f]{8}, manifest says"):
        ShardSearcher(version, 0)
    assert ShardSearcher(version, 1).index.ntotal > 0  # the other shard is whole and loads


def test_changed_vector_bytes_are_found_when_checksums_are_asked_for(version):
    flip_byte(version / VECTORS, 1000)
    assert ShardSearcher(version, 0).index.ntotal > 0  # by default the 64 GB-scale files are sized, not read
    with pytest.raises(IndexFormatError, match=r"vectors\.f32: damaged \(crc32"):
        ShardSearcher(version, 0, verify_checksums=True)
    with pytest.raises(IndexFormatError, match=r"vectors\.f32: damaged"):
        verify_files(version, read_manifest(version).files, checksums=[VECTORS])


def test_a_format_2_index_still_loads_and_a_damaged_shard_of_it_is_one_line(version):
    raw = json.loads((version / MANIFEST).read_text())
    raw["format_version"] = 2
    del raw["files"]
    (version / MANIFEST).write_text(json.dumps(raw))
    assert read_manifest(version).files == {}
    assert ShardSearcher(version, 0).index.ntotal > 0
    cut_short(version / "shard_0.faiss")
    with pytest.raises(IndexFormatError, match=r"shard_0\.faiss: FAISS cannot read it \("):
        ShardSearcher(version, 0)


def test_a_group_on_a_damaged_shard_fails_fast_in_one_line_and_leaves_no_replica(ray_cluster, version):
    flip_byte(version / "shard_1.faiss", 40)
    cfg = RetrievalConfig(group="damaged", namespace=TEST_NAMESPACE, actor_num_cpus=0.1, replicas=2)
    started = time.monotonic()
    with pytest.raises(IndexFormatError) as error:
        start_retrieval_group(str(version), cfg, ready_timeout_s=120)
    assert type(error.value) is IndexFormatError  # Ray's wrapper unwrapped: the message is the one line
    assert "\n" not in str(error.value) and "shard_1.faiss: damaged (crc32" in str(error.value)
    assert time.monotonic() - started < 60  # Ray does not restart an actor whose constructor raised
    assert list_members("damaged", TEST_NAMESPACE) == []  # shard 0's replicas, which loaded, are stopped too
