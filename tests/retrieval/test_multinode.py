"""SERVE across real Ray nodes: where replicas land, and what a lost retrieval node costs the callers.

The cluster (a head without `retrieval_node`, two raylets offering it, a third added after one is killed) runs in
a process of its own, tests/retrieval/multinode_cluster.py, since this process already belongs to the session's
cluster; it prints what it observed as JSON and these tests judge it. Slow: three raylets start and one dies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.retrieval.local import LocalRetriever
from tests.retrieval.multinode_cluster import CFG, QUERY_SEED

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def observed(flat_index):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)  # the harness's own cluster, never one this machine already runs
    done = subprocess.run([sys.executable, "-m", "tests.retrieval.multinode_cluster", str(flat_index)], check=False,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _nodes_by_shard(placement: list[dict]) -> dict[int, list[str]]:
    nodes = {}
    for member in placement:
        nodes.setdefault(member["shard"], []).append(member["node"])
    return nodes


def _expected_ids(flat_index) -> list:
    local = LocalRetriever(flat_index)
    queries = np.random.default_rng(QUERY_SEED).standard_normal((3, local.dimension)).astype(np.float32)
    return local.retrieve(queries, 4).ids.tolist()


def test_replicas_of_a_shard_sit_on_different_retrieval_nodes_and_answer_the_driver(observed, flat_index):
    placement = observed["placement"]
    assert len(placement) == 2 * CFG.replicas, placement
    assert all(m["node"].startswith("retrieval-") for m in placement), placement  # never the head
    for shard, nodes in _nodes_by_shard(placement).items():
        assert len(set(nodes)) == CFG.replicas, f"shard {shard}'s replicas share a node: {placement}"
    assert observed["placement_groups"] == ["STRICT_SPREAD", "STRICT_SPREAD"]
    assert observed["ids_before"] == _expected_ids(flat_index)


def test_calls_fail_over_to_the_other_node_when_a_retrieval_node_dies(observed):
    lost = observed["lost_node"]
    assert lost["failed_calls"] == [], lost["failed_calls"][:3]
    assert lost["calls_after_kill"] > 0
    assert lost["first_success_after_kill_s"] < CFG.call_timeout_s, lost
    assert lost["longest_call_s"] < CFG.call_timeout_s + 1, lost
    # status names the replica of each shard that was on the lost node, waiting for a node to return to
    assert sorted(m["shard"] for m in lost["status_lost"]) == [0, 1], lost["status_lost"]
    assert {m["placement"] for m in lost["status_lost"]} == {"RESCHEDULING"}, lost["status_lost"]
    assert lost["status_answering"] == 2


def test_a_new_retrieval_node_brings_the_group_back_to_r_replicas_on_the_same_version(observed, flat_index):
    placement = observed["placement_after_repair"]
    assert len(placement) == 2 * CFG.replicas, placement
    assert "retrieval-a" not in {m["node"] for m in placement}, placement
    for shard, nodes in _nodes_by_shard(placement).items():
        assert len(set(nodes)) == CFG.replicas, f"shard {shard}'s replicas share a node: {placement}"
    assert {m["version"] for m in placement} == {observed["version"]}
    assert observed["ids_after"] == _expected_ids(flat_index)


def test_a_shard_with_no_replica_left_fails_the_call_naming_the_shard(observed):
    lost = observed["no_replica_left"]
    assert lost["type"] == "ShardUnavailable", lost
    assert "every replica of shard 0 failed" in lost["error"], lost
    assert lost["after_s"] < CFG.replicas * CFG.call_timeout_s + 5, lost
