"""A retrieval group on a real multi-node Ray cluster (Ray's `Cluster` harness: a head and raylets on this machine),
through placement, a lost node, its replacement and the loss of every replica of the shards.

    python -m tests.retrieval.multinode_cluster INDEX_DIR   -> one JSON line of observations on stdout

Run in a process of its own by tests/retrieval/test_multinode.py: the test session's own Ray cluster lives in the
test process, and one process joins one cluster. The head offers no `retrieval_node` (like cluster.yaml's head);
two retrieval nodes do, and a third one joins after the first is killed.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import ray
from ray.cluster_utils import Cluster

from pipeline.config import RetrievalConfig
from pipeline.errors import RetrievalError
from pipeline.ray_session import pass_results_inline
from pipeline.retrieval.client import RetrievalClient
from pipeline.retrieval.group import (
    group_status,
    start_retrieval_group,
    stop_retrieval_group,
)
from pipeline.retrieval.placement import group_placements

NAMESPACE = "rag-multinode"
QUERY_SEED = 3
RETRIEVAL_NODE = {"num_cpus": 8, "resources": {"retrieval_node": 16}}
CFG = RetrievalConfig(group="spread", namespace=NAMESPACE, replicas=2, actor_num_cpus=0.5,
                      actor_resources={"retrieval_node": 1}, call_timeout_s=5.0, coalesce_window_ms=0)


def placement(names: dict) -> list[dict]:
    """Each answering member: shard, replica, the name of its node."""
    return [{"shard": m["shard"], "replica": m["replica"], "node": names.get(m["node_id"], m["node_id"]),
             "version": m["version"]} for m in group_status(CFG.group, NAMESPACE, timeout_s=5) if "node_id" in m]


class Caller(threading.Thread):
    """Calls the group without pause, noting (start, end, error or None) for each call."""

    def __init__(self, client: RetrievalClient, queries: np.ndarray):
        super().__init__(daemon=True)
        self.client, self.queries, self.calls, self.stop = client, queries, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.client.retrieve(self.queries, 4)
                error = None
            except RetrievalError as e:
                error = str(e)
            self.calls.append((started, time.monotonic(), error))


def wait_for(condition, timeout_s: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"not within {timeout_s}s")
        time.sleep(0.5)
    return time.monotonic() - started


def lose_a_node(cluster, victim, client, queries, names) -> dict:
    """Kill `victim` (raylet and workers, no goodbye) while a caller calls; what callers and status saw."""
    caller = Caller(client, queries)
    caller.start()
    time.sleep(2.0)
    killed = time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    # Ray marks the node dead after its health checks fail (seconds, more on a loaded machine); from then on the
    # lost replicas' bundles wait for a node (RESCHEDULING).
    status = []

    def lost_seen() -> bool:
        status[:] = group_status(CFG.group, NAMESPACE, timeout_s=5)
        return any(m.get("placement") == "RESCHEDULING" for m in status)

    detected_s = wait_for(lost_seen, 90) + 0.0
    caller.stop.set()
    caller.join()
    after = [c for c in caller.calls if c[0] >= killed]
    first_ok = next(c for c in after if c[2] is None)
    spanning = [c for c in caller.calls if c[0] < killed <= c[1]]
    return {"first_success_after_kill_s": round(first_ok[1] - killed, 2),
            "rescheduling_seen_after_s": round(time.monotonic() - killed, 1), "status_polled_s": round(detected_s, 1),
            "longest_call_s": round(max(c[1] - c[0] for c in caller.calls), 2),
            "calls": len(caller.calls), "calls_after_kill": len(after),
            "failed_calls": [c[2] for c in caller.calls if c[2]],
            "call_in_flight_at_kill_s": round(spanning[0][1] - spanning[0][0], 2) if spanning else None,
            "status_lost": [{"shard": m["shard"], "replica": m["replica"], "placement": m.get("placement"),
                             "error": m["error"][:60]} for m in status if "error" in m],
            "status_answering": len([m for m in status if "error" not in m])}


def main(index_dir: str) -> dict:
    pass_results_inline()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    names = {cluster.head_node.node_id: "head"}
    a, b = cluster.add_node(**RETRIEVAL_NODE), cluster.add_node(**RETRIEVAL_NODE)
    names.update({a.node_id: "retrieval-a", b.node_id: "retrieval-b"})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    out = {}
    try:
        started = time.perf_counter()
        members = start_retrieval_group(index_dir, CFG)
        out["start_s"] = round(time.perf_counter() - started, 2)
        out["version"] = members[0]["version"]
        out["placement"] = placement(names)
        out["placement_groups"] = [row["strategy"] for _, (_, row) in
                                   sorted(group_placements(CFG.group, NAMESPACE).items())]
        client = RetrievalClient(CFG.group, NAMESPACE, timeout_s=CFG.call_timeout_s, offset=0)
        queries = np.random.default_rng(QUERY_SEED).standard_normal((3, client.dimension)).astype(np.float32)
        out["ids_before"] = client.retrieve(queries, 4).ids.tolist()
        out["lost_node"] = lose_a_node(cluster, a, client, queries, names)
        c = cluster.add_node(**RETRIEVAL_NODE)
        names[c.node_id] = "retrieval-c"
        out["back_to_replicas_s"] = round(wait_for(lambda: len(placement(names)) == 4, 120), 2)
        out["placement_after_repair"] = placement(names)
        out["ids_after"] = client.retrieve(queries, 4).ids.tolist()
        for node in (b, c):
            cluster.remove_node(node, allow_graceful=False)
        started = time.monotonic()
        try:
            client.retrieve(queries, 4)
            out["no_replica_left"] = {"error": None}
        except RetrievalError as e:
            out["no_replica_left"] = {"error": str(e), "type": type(e).__name__,
                                      "after_s": round(time.monotonic() - started, 2)}
    finally:
        stop_retrieval_group(CFG.group, NAMESPACE)
        ray.shutdown()
        cluster.shutdown()
    return out


if __name__ == "__main__":
    # Ray's raylets also write to this stdout: the observations are its last line.
    print("\n" + json.dumps(main(sys.argv[1])), flush=True)
