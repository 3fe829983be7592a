"""A full disk or a read-only file system while an index version is written: one StorageError line naming
the file, and nothing half-written left in the location (real tmpfs file systems; skipped where mount is
refused)."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from pipeline.config import IndexConfig, KnowledgeBaseConfig
from pipeline.errors import StorageError
from pipeline.index.build import build_index, build_shards
from pipeline.index.manifest import MANIFEST, PASSAGES, VECTORS, read_manifest
from pipeline.index.versions import CURRENT
from tests.tmpfs import fill, mounted_tmpfs, remount_read_only

PAGE = 4096


@pytest.fixture
def disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", size="1m") as directory:
        yield directory


def pages(n_bytes: int) -> int:
    return -(-n_bytes // PAGE) * PAGE


def unbuilt_shards(flat_index, directory):
    """`directory` holding the test index's passages and vectors, and its manifest without files or recall."""
    source = flat_index / "v0001"
    directory.mkdir()
    for name in (PASSAGES, VECTORS):
        shutil.copy(source / name, directory / name)
    manifest = dataclasses.replace(read_manifest(source), files={}, recall_at_10_vs_exact=[])
    return manifest, [(source / f"shard_{s}.faiss").stat().st_size for s in range(manifest.num_shards)]


def test_a_full_disk_while_faiss_writes_a_shard_is_one_line_naming_the_shard(flat_index, disk):
    manifest, shard_sizes = unbuilt_shards(flat_index, disk / "building")
    fill(disk, leave_bytes=shard_sizes[0] // 2)
    with pytest.raises(StorageError, match=r"shard_0\.faiss: writing failed: no space left on device$"):
        build_shards(disk / "building", manifest, train_sample=100, recall_queries=0, log=lambda line: None)
    assert not (disk / "building" / MANIFEST).exists()


def test_a_full_disk_while_the_manifest_is_written_leaves_no_manifest(flat_index, disk):
    manifest, shard_sizes = unbuilt_shards(flat_index, disk / "building")
    fill(disk, leave_bytes=sum(pages(size) for size in shard_sizes))
    with pytest.raises(StorageError, match=r"manifest\.json: writing failed: no space left on device$"):
        build_shards(disk / "building", manifest, train_sample=100, recall_queries=0, log=lambda line: None)
    # Neither a manifest (which would mark the version complete) nor its temporary sibling.
    assert sorted(p.name for p in (disk / "building").iterdir()) == [PASSAGES, "shard_0.faiss", "shard_1.faiss",
                                                                     VECTORS]


@pytest.mark.slow  # builds indexes of its own through Ray Data (or a torch process group)
def test_a_full_disk_during_a_build_leaves_no_location_behind(ray_cluster, corpus_file, disk):
    fill(disk, leave_bytes=16 * 1024)
    location = disk / "indexes" / "new"
    with pytest.raises(StorageError, match=r"(passages\.arrow|vectors\.f32).*: writing failed: no space left on "
                                           r"device$"):
        build_index(KnowledgeBaseConfig(documents=str(corpus_file)), IndexConfig(directory=str(location)))
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # not even the parent the build created


@pytest.mark.slow  # builds indexes of its own through Ray Data (or a torch process group)
def test_a_full_disk_while_adding_a_version_keeps_the_served_one(ray_cluster, flat_index, corpus_file, disk):
    location = shutil.copytree(flat_index, disk / "index")
    fill(disk, leave_bytes=16 * 1024)
    with pytest.raises(StorageError, match=r"no space left on device$"):
        build_index(KnowledgeBaseConfig(documents=str(corpus_file)),
                    IndexConfig(directory=str(location), overwrite=True))
    assert sorted(p.name for p in location.iterdir()) == [CURRENT, "v0001"]  # no .building-* left
    assert (location / CURRENT).read_text().strip() == "v0001"
    read_manifest(location, checksums=True)


def test_a_read_only_file_system_is_one_line_before_any_work(corpus_file, disk):
    remount_read_only(disk)
    with pytest.raises(StorageError, match=r"disk/new: creating failed: read-only file system$"):
        build_index(KnowledgeBaseConfig(documents=str(corpus_file)), IndexConfig(directory=str(disk / "new")))
    assert list(disk.iterdir()) == []
