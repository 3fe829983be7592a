"""Faults survived: a killed retrieval replica or training worker does not end the run; a dead shard fails fast."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray

from pipeline.config import RetrievalConfig, RunConfig, apply_overrides
from pipeline.errors import RetrievalError
from pipeline.retrieval.client import RetrievalClient
from pipeline.retrieval.group import (
    group_status,
    start_retrieval_group,
    stop_retrieval_group,
)
from pipeline.retrieval.group_record import actor_name
from pipeline.retrieval.local import LocalRetriever
from pipeline.train.finetune import run_finetune
from tests.conftest import TEST_NAMESPACE


def _config(tiny_demo, tmp_path, group, **overrides) -> RunConfig:
    return apply_overrides(RunConfig(), {**tiny_demo, "train.output_dir": str(tmp_path / "run"),
                                         "retrieval.group": group, "train.num_workers": 1, **overrides})


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _train_in_background(cfg):
    outcome = {}

    def target():
        try:
            outcome["result"] = run_finetune(cfg)
        except BaseException as e:  # surfaced by the test below
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_training_survives_a_killed_replica_which_restarts(tiny_demo, tmp_path):
    # The kill lands during epoch 1; two more epochs keep calling the replica that remains and the restarted one.
    cfg = _config(tiny_demo, tmp_path, "faulty", **{"retrieval.replicas": 2, "train.epochs": 3})
    start_retrieval_group(cfg.index.directory, cfg.retrieval)
    try:
        victim = ray.get_actor(actor_name("faulty", 0, 0), namespace=TEST_NAMESPACE)
        old_pid = ray.get(victim.describe.remote())["pid"]
        thread, outcome = _train_in_background(cfg)
        _wait_for(lambda: ray.get(victim.describe.remote())["calls"] >= 2, 600, "training to call replica 0")
        os.kill(old_pid, signal.SIGKILL)
        thread.join(timeout=900)
        assert "error" not in outcome, outcome.get("error")
        history = outcome["result"].history
        assert [h["epoch"] for h in history] == [1, 2, 3]
        restarted = _wait_for(lambda: [m for m in group_status("faulty", TEST_NAMESPACE)
                                       if m.get("replica") == 0 and "pid" in m], 120, "replica 0 to restart")
        assert restarted[0]["pid"] != old_pid
    finally:
        stop_retrieval_group("faulty", TEST_NAMESPACE)


def _train_worker_pids() -> list[int]:
    """Training worker processes of this test session's cluster (children of its raylet), not any other's."""
    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    return [p.pid for p in raylet.children(recursive=True)
            if any("RayTrainWorker" in part for part in (p.cmdline() or []))]


def test_killed_training_worker_resumes_from_the_latest_checkpoint(tiny_demo, tmp_path):
    # Enough epochs that the run is still going when the kill lands just after the second checkpoint: three
    # more (tens of seconds), against the kill's fraction of a second.
    epochs = 5
    cfg = _config(tiny_demo, tmp_path, "worker-fault", **{"train.epochs": epochs, "train.max_failures": 2})
    try:
        thread, outcome = _train_in_background(cfg)
        storage = Path(cfg.train.output_dir) / "ray_train" / "finetune"
        # The second checkpoint on disk means the first one is registered with Train: a kill sooner can
        # land before that, and the restart would (rightly) begin from scratch.
        _wait_for(lambda: len(list(storage.glob("checkpoint_*"))) >= 2, 600, "two checkpoints")
        # Kill them all: a worker process of the previous test's run may still be exiting beside ours.
        for pid in _wait_for(_train_worker_pids, 60, "a training worker process"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        thread.join(timeout=900)
        assert "error" not in outcome, outcome.get("error")
        history = outcome["result"].history
        steps = history[0]["step"]
        assert [h["epoch"] for h in history] == list(range(1, epochs + 1))  # no gap, no duplicate epoch
        assert [h["step"] for h in history] == [steps * e for e in range(1, epochs + 1)]
        assert any(h["resumed_at_step"] > 0 for h in history)  # the kill really forced a restore
    finally:
        stop_retrieval_group("worker-fault", TEST_NAMESPACE)


def test_shard_with_every_replica_dead_fails_fast_and_clearly(tiny_demo):
    cfg = apply_overrides(RunConfig(), {**tiny_demo, "retrieval.group": "dead", "retrieval.replicas": 2,
                                        "retrieval.call_timeout_s": 10})
    start_retrieval_group(cfg.index.directory, cfg.retrieval)
    try:
        client = RetrievalClient("dead", TEST_NAMESPACE, timeout_s=10)
        for replica in range(2):
            ray.kill(ray.get_actor(actor_name("dead", 0, replica), namespace=TEST_NAMESPACE), no_restart=True)
        started = time.monotonic()
        with pytest.raises(RetrievalError, match=r"group 'dead': every replica of shard 0 failed"):
            client.retrieve(np.zeros((2, client.dimension), np.float32), 3)
        assert time.monotonic() - started < 2 * 10 + 5
    finally:
        stop_retrieval_group("dead", TEST_NAMESPACE)


# ---------------------------------------------------------------- failover inside one call


def _two_replica_group(flat_index, group: str, timeout_s: float) -> RetrievalConfig:
    cfg = RetrievalConfig(group=group, namespace=TEST_NAMESPACE, replicas=2, actor_num_cpus=0.1,
                          call_timeout_s=timeout_s)
    start_retrieval_group(str(flat_index), cfg)
    return cfg


def _served(group: str) -> dict:
    """Calls served per (shard, replica), for the members that answer (a killed one may still be restarting)."""
    return {(m["shard"], m["replica"]): m["calls"] for m in group_status(group, TEST_NAMESPACE) if "calls" in m}


def _question_vectors(client, n=3):
    return np.random.default_rng(7).standard_normal((n, client.dimension)).astype(np.float32)


def test_replica_hanging_during_a_call_times_out_and_another_replica_answers(flat_index, ray_cluster):
    _two_replica_group(flat_index, "hang", timeout_s=3)
    try:
        client = RetrievalClient("hang", TEST_NAMESPACE, timeout_s=3, offset=0)  # shard 0 asks replica 0 first
        queries = _question_vectors(client)
        expected = LocalRetriever(flat_index).retrieve(queries, 4)
        ray.get(ray.get_actor(actor_name("hang", 0, 0), namespace=TEST_NAMESPACE).pause_for.remote(30))
        before = _served("hang")
        started = time.monotonic()
        result = client.retrieve(queries, 4)
        elapsed = time.monotonic() - started
        served = {key: calls - before[key] for key, calls in _served("hang").items()}
        np.testing.assert_array_equal(result.ids, expected.ids)
        assert served[(0, 0)] == 1 and served[(0, 1)] == 1, served  # asked the stuck one, answered by the other
        assert 3 <= elapsed < 20, elapsed  # waited out the timeout, not the 30 s pause
    finally:
        stop_retrieval_group("hang", TEST_NAMESPACE)


def test_replica_dying_during_a_call_is_replaced_by_another_within_the_call(flat_index, ray_cluster):
    _two_replica_group(flat_index, "die", timeout_s=60)
    try:
        client = RetrievalClient("die", TEST_NAMESPACE, timeout_s=60, offset=0)
        queries = _question_vectors(client)
        expected = LocalRetriever(flat_index).retrieve(queries, 4)
        victim = ray.get_actor(actor_name("die", 0, 0), namespace=TEST_NAMESPACE)
        pid = ray.get(victim.describe.remote())["pid"]
        ray.get(victim.pause_for.remote(30))  # the call will be inside the actor when the process dies
        killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
        killer.start()
        before = _served("die")[(0, 1)]
        started = time.monotonic()
        result = client.retrieve(queries, 4)
        elapsed = time.monotonic() - started
        killer.join()
        np.testing.assert_array_equal(result.ids, expected.ids)
        assert _served("die")[(0, 1)] == before + 1
        assert elapsed < 25, elapsed  # answered after the death, long before the pause or the timeout
    finally:
        stop_retrieval_group("die", TEST_NAMESPACE)
