"""SERVE on one node: the group's placement groups (replicas sharing the node, or refusing to), status and repair."""

from __future__ import annotations

import json
import time

import pytest
import ray
from ray.util.placement_group import placement_group_table

from jobs import retrieval_service
from pipeline.config import RetrievalConfig
from pipeline.errors import RetrievalError
from pipeline.retrieval.group import start_retrieval_group, stop_retrieval_group
from pipeline.retrieval.group_record import actor_name, list_members
from pipeline.retrieval.placement import placement_name
from tests.conftest import TEST_NAMESPACE


def _placement_groups(group: str) -> dict[str, dict]:
    """The group's live placement groups by name."""
    prefix = placement_name(group, TEST_NAMESPACE, 0)[:-1]
    return {row["name"]: row for row in placement_group_table().values()
            if row["name"].startswith(prefix) and row["state"] != "REMOVED"}


def test_on_one_node_replicas_share_it_with_a_warning_and_stop_removes_their_placement(flat_index, ray_cluster,
                                                                                     capsys):
    cfg = RetrievalConfig(group="onenode", namespace=TEST_NAMESPACE, replicas=2, actor_num_cpus=0.1)
    try:
        members = start_retrieval_group(str(flat_index), cfg)
        assert "1 node(s) offer {'CPU': 0.1} for 2 replicas of each shard" in capsys.readouterr().out
        assert len({m["node_id"] for m in members}) == 1 and len(members) == 4
        rows = _placement_groups("onenode")
        assert sorted(rows) == [placement_name("onenode", TEST_NAMESPACE, s) for s in (0, 1)]
        assert {row["strategy"] for row in rows.values()} == {"SPREAD"}
        assert {len(row["bundles"]) for row in rows.values()} == {2}
    finally:
        stop_retrieval_group("onenode", TEST_NAMESPACE)
    assert _placement_groups("onenode") == {}  # no reservation left behind


def test_strict_placement_on_too_few_nodes_ends_the_start_with_one_error_and_leaves_nothing(flat_index, ray_cluster):
    cfg = RetrievalConfig(group="strict", namespace=TEST_NAMESPACE, replicas=2, actor_num_cpus=0.1,
                          placement="strict")
    with pytest.raises(RetrievalError, match=r"not ready after 5s.*on 2 different nodes \(retrieval.placement strict"):
        start_retrieval_group(str(flat_index), cfg, ready_timeout_s=5)
    assert _placement_groups("strict") == {}


def test_status_shows_a_replica_killed_for_good_and_repair_starts_it_on_the_served_version(flat_index, capsys):
    args = ["--index.directory", str(flat_index), "--retrieval.group", "repair", "--retrieval.namespace",
            TEST_NAMESPACE, "--retrieval.actor_num_cpus", "0.1", "--retrieval.replicas", "2"]
    assert retrieval_service.main(["start", *args]) == 0
    try:
        served = {json.loads(line)["version"] for line in capsys.readouterr().out.splitlines() if '"shard"' in line}
        victim = ray.get_actor(actor_name("repair", 1, 0), namespace=TEST_NAMESPACE)
        old_id = victim._actor_id
        ray.kill(victim, no_restart=True)
        wait_until(lambda: len(list_members("repair", TEST_NAMESPACE)) == 3)
        assert retrieval_service.main(["status", *args]) == 0
        rows = _rows(capsys.readouterr().out)
        assert [(r["shard"], r["replica"]) for r in rows if "error" in r] == [(1, 0)]
        assert "gone" in rows[2]["error"] and rows[2]["placement"] == "CREATED"
        assert retrieval_service.main(["repair", *args]) == 0
        rows = _rows(capsys.readouterr().out)
        assert len(rows) == 4 and {r["version"] for r in rows} == served
        assert ray.get_actor(actor_name("repair", 1, 0), namespace=TEST_NAMESPACE)._actor_id != old_id
    finally:
        retrieval_service.main(["stop", *args])
    with pytest.raises(RetrievalError, match="retrieval group 'repair' is not running .*nothing to repair"):
        retrieval_service.main(["repair", *args])


def _rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.1)
