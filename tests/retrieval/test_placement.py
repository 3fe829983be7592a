"""SERVE on one node: the group's placement groups, when the replicas of a shard must share the node or may not."""

from __future__ import annotations

import pytest
from ray.util.placement_group import placement_group_table

from pipeline.config import RetrievalConfig
from pipeline.errors import RetrievalError
from pipeline.retrieval.group import start_retrieval_group, stop_retrieval_group
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
