"""Index versions served by a live group: a location holds versions side by side, a group rolls forward one
replica at a time while callers keep calling, every call is answered wholly by one version, a restarted actor
loads the version its group serves, and a group is never silently left on an old version."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from pipeline.bench.synthetic import write_synthetic_index
from pipeline.config import RetrievalConfig
from pipeline.errors import IndexFormatError, RetrievalError
from pipeline.index.manifest import open_vectors, read_manifest
from pipeline.index.versions import (
    begin_version,
    list_versions,
    publish_version,
    resolve_version,
)
from pipeline.retrieval.client import RetrievalClient
from pipeline.retrieval.group import (
    group_status,
    start_retrieval_group,
    stop_retrieval_group,
)
from pipeline.retrieval.group_record import actor_name, served_version
from pipeline.retrieval.rollout import roll_group_forward
from tests.conftest import TEST_NAMESPACE

COUNT, DIMENSION, SHARDS = 3000, 32, 2


def _add_version(location: Path, seed: int):
    """A new version of `location`: synthetic vectors of its own seed (so every version ranks differently)."""
    building = begin_version(location)
    write_synthetic_index(building, COUNT, DIMENSION, "Flat", shards=SHARDS, seed=seed)
    return publish_version(location, building)


def _exact_ids(version_dir: str, queries: np.ndarray, k: int) -> np.ndarray:
    vectors = np.array(open_vectors(version_dir, read_manifest(version_dir)))
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def _config(group: str, **overrides) -> RetrievalConfig:
    return RetrievalConfig(group=group, namespace=TEST_NAMESPACE, actor_num_cpus=0.1, coalesce_window_ms=0,
                           version_check_s=0.05, call_timeout_s=20, **overrides)


@pytest.fixture
def location(tmp_path):
    location = tmp_path / "index"
    _add_version(location, seed=1)
    return location


# ----------------------------------------------------------------------------- the location, no Ray

def test_a_location_resolves_to_its_current_version_and_a_version_to_itself(location):
    second = _add_version(location, seed=2)
    assert list_versions(location) == ["v0001", "v0002"] and second.name == "v0002"
    assert resolve_version(location).directory == location.resolve() / "v0002"
    assert resolve_version(location / "v0001").directory == location.resolve() / "v0001"
    assert read_manifest(location).build_id == read_manifest(location / "v0002").build_id
    assert read_manifest(location / "v0001").build_id != read_manifest(location / "v0002").build_id


def test_a_directory_without_current_or_a_current_naming_nothing_is_a_one_line_error(tmp_path, location):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match=r"empty: no CURRENT pointer; not an index location"):
        read_manifest(tmp_path / "empty")
    (location / "CURRENT").write_text("v0007\n")
    with pytest.raises(IndexFormatError, match=r"CURRENT: names version 'v0007', which is not a directory"):
        read_manifest(location)


def test_a_version_missing_a_file_is_a_one_line_error(location):
    (location / "v0001" / "shard_1.faiss").unlink()
    with pytest.raises(IndexFormatError, match=r"v0001/shard_1.faiss: missing \(manifest lists 2 shards\)"):
        read_manifest(location)


# ----------------------------------------------------------------------------- a live group

@pytest.mark.slow  # builds indexes of its own through Ray Data (or a torch process group)
def test_swap_under_four_concurrent_callers_fails_no_call_and_mixes_no_versions(ray_cluster, location):
    cfg = _config("swap", replicas=2)
    start_retrieval_group(str(location), cfg)
    try:
        rng = np.random.default_rng(0)
        queries = [rng.standard_normal((8, DIMENSION)).astype(np.float32) for _ in range(4)]
        answers, errors, stop = [[] for _ in range(4)], [], threading.Event()

        def call(caller: int):
            client = RetrievalClient(cfg.group, TEST_NAMESPACE, offset=caller, version_check_s=0.05)
            while not stop.is_set():
                try:
                    result = client.retrieve(queries[caller], 5)
                    answers[caller].append((result.version, result.ids))
                except Exception as e:  # noqa: BLE001 (every failure is counted, the test asserts none)
                    errors.append(e)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        versions = [str(resolve_version(location).directory)]
        # The answers each version must give, computed before a later roll-forward removes its files.
        exact = {(versions[0], c): _exact_ids(versions[0], queries[c], 5) for c in range(4)}
        for seed in (2, 3, 4):
            time.sleep(1.0)
            version = _add_version(location, seed)
            exact.update({(str(version.directory), c): _exact_ids(str(version.directory), queries[c], 5)
                          for c in range(4)})
            roll_group_forward(cfg.group, TEST_NAMESPACE, version)
            versions.append(str(version.directory))
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        calls = sum(len(a) for a in answers)
        assert calls >= 40
        # Each call's ids are exactly the top-k of the one version it names, across both shards.
        for caller, rows in enumerate(answers):
            for version, ids in rows:
                np.testing.assert_array_equal(ids, exact[(version, caller)])
        seen = {version for rows in answers for version, _ in rows}
        assert seen <= set(versions) and versions[-1] in seen and len(seen) >= 3
        # Every caller ends on the newest version, and replicas keep at most the newest and the previous.
        assert all(rows[-1][0] == versions[-1] for rows in answers)
        assert all(m["held_versions"] == sorted(versions[-2:]) for m in group_status(cfg.group, TEST_NAMESPACE))
        assert list_versions(location) == ["v0003", "v0004"]  # older ones were removed once no actor held them
    finally:
        stop_retrieval_group(cfg.group, TEST_NAMESPACE)


@pytest.mark.slow  # builds indexes of its own through Ray Data (or a torch process group)
def test_a_replica_killed_during_a_roll_forward_comes_back_on_the_served_version(ray_cluster, location):
    cfg = _config("killswap", replicas=2)
    start_retrieval_group(str(location), cfg)
    try:
        victim = ray.get_actor(actor_name(cfg.group, 1, 1), namespace=TEST_NAMESPACE)
        pid = ray.get(victim.describe.remote())["pid"]
        version = _add_version(location, seed=2)
        # Killed as the roll-forward starts: Ray takes seconds to restart it, so the roll meets it dead or
        # restarting, and must wait for it rather than fail or leave it behind.
        os.kill(pid, signal.SIGKILL)
        rollout = roll_group_forward(cfg.group, TEST_NAMESPACE, version)
        assert rollout.version == "v0002" and served_version(cfg.group, TEST_NAMESPACE).name == "v0002"
        deadline = time.monotonic() + 60
        members = []
        while time.monotonic() < deadline:
            members = group_status(cfg.group, TEST_NAMESPACE)
            if all("version" in m for m in members) and any(m["pid"] != pid for m in members if m["replica"] == 1
                                                             and m["shard"] == 1):
                break
            time.sleep(0.5)
        assert {m["version"] for m in members} == {"v0002"}, members
        client = RetrievalClient(cfg.group, TEST_NAMESPACE)
        queries = np.random.default_rng(1).standard_normal((4, DIMENSION)).astype(np.float32)
        for _ in range(4):  # every replica of both shards answers from v0002
            result = client.retrieve(queries, 5)
            assert Path(result.version).name == "v0002"
            np.testing.assert_array_equal(result.ids, _exact_ids(str(version.directory), queries, 5))
    finally:
        stop_retrieval_group(cfg.group, TEST_NAMESPACE)


def test_a_restarted_actor_loads_the_version_its_group_serves_not_the_newest(ray_cluster, location):
    cfg = _config("restart")
    start_retrieval_group(str(location), cfg)
    try:
        _add_version(location, seed=2)  # CURRENT moves to v0002; the group was not rolled
        actor = ray.get_actor(actor_name(cfg.group, 0, 0), namespace=TEST_NAMESPACE)
        pid = ray.get(actor.describe.remote())["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                info = ray.get(actor.describe.remote(), timeout=10)
                if info["pid"] != pid:
                    break
            except ray.exceptions.RayError:
                pass
            time.sleep(0.5)
        assert info["pid"] != pid and info["version"] == "v0001"
    finally:
        stop_retrieval_group(cfg.group, TEST_NAMESPACE)


def test_a_new_version_is_rolled_forward_to_or_refused_naming_both_never_served_stale(ray_cluster, location):
    refuse = _config("stale", on_new_version="refuse")
    start_retrieval_group(str(location), refuse)
    try:
        _add_version(location, seed=2)  # a rebuild while the group serves v0001
        assert "v0001" in list_versions(location)  # kept: the group still holds it
        with pytest.raises(RetrievalError, match=r"group 'stale' serves v0001 of .*index, which now has v0002"):
            start_retrieval_group(str(location), refuse)
        members = start_retrieval_group(str(location), _config("stale", on_new_version="roll"))
        assert {m["version"] for m in members} == {"v0002"}
        result = RetrievalClient("stale", TEST_NAMESPACE).retrieve(np.ones((1, DIMENSION), np.float32), 3)
        assert Path(result.version).name == "v0002"
    finally:
        stop_retrieval_group("stale", TEST_NAMESPACE)
