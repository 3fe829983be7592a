"""A retrieval group lost under a training run (stopped by someone, or its actors gone without restart) is
brought back once, on the version the run was using, inside the call that found it gone; a second loss, or a
version no longer on disk, ends the run at once with one error and no Ray Train restart spent."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray

from pipeline.config import RetrievalConfig, RunConfig, apply_overrides
from pipeline.retrieval.group import (
    group_status,
    start_retrieval_group,
    stop_retrieval_group,
)
from pipeline.retrieval.group_record import list_members
from pipeline.retrieval.local import LocalRetriever
from pipeline.retrieval.recovery import (
    GroupLostError,
    RecoveringClient,
    forget_run,
    restarts_so_far,
)
from pipeline.train.finetune import run_finetune
from tests.conftest import TEST_NAMESPACE


def _group(index_dir, name: str) -> RetrievalConfig:
    cfg = RetrievalConfig(group=name, namespace=TEST_NAMESPACE, replicas=1, actor_num_cpus=0.1, call_timeout_s=10)
    start_retrieval_group(str(index_dir), cfg)
    return cfg


def _queries(dimension: int) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, dimension)).astype(np.float32)


def test_a_lost_group_is_restarted_once_on_its_version_and_a_second_loss_is_an_error(flat_index, ray_cluster):
    cfg, run_id = _group(flat_index, "lost-once"), uuid.uuid4().hex
    try:
        client = RecoveringClient(cfg, run_id, rank=0, step=lambda: 7)
        peer = RecoveringClient(cfg, run_id, rank=1, step=lambda: 7)  # another worker of the same run
        queries = _queries(client.dimension)
        expected = LocalRetriever(flat_index).retrieve(queries, 4)
        stop_retrieval_group("lost-once", TEST_NAMESPACE)  # as `retrieval_service stop` does
        np.testing.assert_array_equal(client.retrieve(queries, 4).ids, expected.ids)
        np.testing.assert_array_equal(peer.retrieve(queries, 4).ids, expected.ids)  # reconnects, no second restart
        assert restarts_so_far(run_id, cfg) == [{"step": 7, "version": str(flat_index / "v0001")}]
        assert {m["version"] for m in group_status("lost-once", TEST_NAMESPACE)} == {"v0001"}
        stop_retrieval_group("lost-once", TEST_NAMESPACE)
        with pytest.raises(GroupLostError, match=r"group 'lost-once' was lost again at step 7 \(restarted once "
                                                 r"already, at step 7\); ending the run"):
            client.retrieve(queries, 4)
        assert list_members("lost-once", TEST_NAMESPACE) == []  # not brought back a second time
    finally:
        stop_retrieval_group("lost-once", TEST_NAMESPACE)
        forget_run(run_id)


def test_a_lost_group_whose_version_left_the_disk_is_an_error_naming_it(flat_index, ray_cluster, tmp_path):
    location = tmp_path / "index"
    shutil.copytree(flat_index, location)
    cfg, run_id = _group(location, "lost-version"), uuid.uuid4().hex
    try:
        client = RecoveringClient(cfg, run_id, rank=0, step=lambda: 3)
        stop_retrieval_group("lost-version", TEST_NAMESPACE)
        shutil.rmtree(location / "v0001")
        with pytest.raises(GroupLostError, match=r"group 'lost-version' was lost at step 3 and cannot be restarted "
                                                 rf"on {location}/v0001: "):
            client.retrieve(_queries(client.dimension), 4)
    finally:
        stop_retrieval_group("lost-version", TEST_NAMESPACE)
        forget_run(run_id)


# ----------------------------------------------------------------------------- real training runs


def _config(tiny_demo, tmp_path, group, **overrides) -> RunConfig:
    return apply_overrides(RunConfig(), {**tiny_demo, "train.output_dir": str(tmp_path / "run"),
                                         "retrieval.group": group, "train.max_failures": 2, **overrides})


def _train_in_background(cfg):
    outcome = {}

    def target():
        try:
            outcome["result"] = run_finetune(cfg)
        except BaseException as e:  # surfaced by the test
            outcome["error"] = e
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _calls(group: str) -> int:
    return sum(m.get("calls", 0) for m in group_status(group, TEST_NAMESPACE))


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _lines_in_worker_logs(text: str) -> list[str]:
    """Lines of this session's worker logs that contain `text` (the test cluster keeps worker output there)."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return [line for path in logs.glob("worker-*.out") for line in path.read_text(errors="replace").splitlines()
            if text in line]


@pytest.mark.slow
def test_training_goes_on_when_its_group_is_stopped_under_it(tiny_demo, tmp_path):
    cfg = _config(tiny_demo, tmp_path, "stopped-once", **{"train.num_workers": 1, "train.epochs": 2})
    start_retrieval_group(cfg.index.directory, cfg.retrieval)
    try:
        old_pids = {m["pid"] for m in group_status("stopped-once", TEST_NAMESPACE)}
        thread, outcome = _train_in_background(cfg)
        _wait_for(lambda: _calls("stopped-once") >= 3, 600, "training to call the group")
        stop_retrieval_group("stopped-once", TEST_NAMESPACE)
        thread.join(timeout=900)
        assert "error" not in outcome, outcome.get("error")
        history = outcome["result"].history
        assert [h["epoch"] for h in history] == [1, 2]
        assert all(h["resumed_at_step"] == 0 for h in history)  # no Ray Train restart: no step lost
        members = group_status("stopped-once", TEST_NAMESPACE)
        assert {m["version"] for m in members} == {"v0001"} and not {m["pid"] for m in members} & old_pids
        said = _lines_in_worker_logs("[retrieval] group 'stopped-once' was lost at step")
        assert len(said) == 1 and "; restarted on v0001 (" in said[0], said
    finally:
        stop_retrieval_group("stopped-once", TEST_NAMESPACE)


@pytest.mark.slow
def test_a_second_loss_ends_a_two_worker_run_at_once_with_one_error(tiny_demo, tmp_path):
    cfg = _config(tiny_demo, tmp_path, "stopped-twice", **{"train.num_workers": 2, "train.epochs": 3})
    start_retrieval_group(cfg.index.directory, cfg.retrieval)
    try:
        thread, outcome = _train_in_background(cfg)
        _wait_for(lambda: _calls("stopped-twice") >= 3, 600, "training to call the group")
        stop_retrieval_group("stopped-twice", TEST_NAMESPACE)
        _wait_for(lambda: _calls("stopped-twice") >= 3, 300, "training to call the restarted group")
        stop_retrieval_group("stopped-twice", TEST_NAMESPACE)
        stopped = time.monotonic()
        thread.join(timeout=600)
        assert isinstance(outcome.get("error"), GroupLostError), outcome
        assert "group 'stopped-twice' was lost again at step" in str(outcome["error"])
        # Ray Train restarting the workers (max_failures 2) would take a worker group start and a model load
        # each, and end on "not found" instead.
        assert outcome["ended"] - stopped < 90, outcome["ended"] - stopped
        assert list_members("stopped-twice", TEST_NAMESPACE) == []
    finally:
        stop_retrieval_group("stopped-twice", TEST_NAMESPACE)
