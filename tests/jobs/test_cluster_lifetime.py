"""Which cluster a job runs on, and whether what it leaves running can outlive it.

No cluster running: `retrieval_service start` refuses (a cluster of its own would end with the command, and the
group with it); `status`/`stop` say so without starting one. A head from `ray start --head` is joined as
`ray.init()` joins it, and the group started on it outlives the command that started it.

Every subprocess here gets its own RAY_TMPDIR: the `ray_current_cluster` file that `ray start` writes (and that
`ray.init()` reads to find a running cluster) lives under it, so our head steers no other process's `ray.init()`
on this machine, and no one else's head steers ours.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pipeline.config import RunConfig, apply_overrides
from pipeline.ray_session import RaySession
from pipeline.train.finetune import group_lifetime_note

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"
NAMESPACE = "rag-cluster-lifetime-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(ray_tmpdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(ray_tmpdir), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _service(ray_tmpdir: Path, action: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/retrieval_service.py", action, "--retrieval.namespace", NAMESPACE,
                           *args], cwd=REPO, env=_env(ray_tmpdir), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def no_cluster_tmpdir():
    path = Path(tempfile.mkdtemp(prefix="rnc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _processes_naming(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("stale", [False, True], ids=["no-address-file", "stale-address-file"])
def test_with_no_cluster_running_start_refuses_and_status_stop_say_so_without_starting_one(no_cluster_tmpdir,
                                                                                            stale):
    if stale:  # what a head killed without `ray stop` leaves: an address nothing listens on any more
        (no_cluster_tmpdir / "ray").mkdir()
        (no_cluster_tmpdir / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")
    start = _service(no_cluster_tmpdir, "start")
    assert start.returncode == 2, start.stderr
    assert start.stdout == ""
    lines = start.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Ray cluster is running to keep retrieval group"), lines
    assert "`ray start --head`, or set RAY_ADDRESS" in lines[0]
    status = _service(no_cluster_tmpdir, "status")
    assert status.returncode == 2
    assert status.stderr.strip().splitlines() == [
        f"error: retrieval group 'rag-demo' is not running: no Ray cluster is running (RAY_ADDRESS is unset and "
        f"{no_cluster_tmpdir}/ray/ray_current_cluster names no running cluster)"]
    stop = _service(no_cluster_tmpdir, "stop")
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip().splitlines() == [f"nothing to stop: no Ray cluster is running (RAY_ADDRESS is unset "
                                                f"and {no_cluster_tmpdir}/ray/ray_current_cluster names no running "
                                                f"cluster)"]
    assert not (no_cluster_tmpdir / "ray").exists() or not list((no_cluster_tmpdir / "ray").glob("session_*"))


def test_a_training_job_on_a_cluster_of_its_own_says_its_group_ends_with_it():
    cfg = apply_overrides(RunConfig(), {"retrieval.group": "g"})
    own, joined = RaySession("127.0.0.1:6379", joined=False), RaySession("127.0.0.1:6379", joined=True)
    note = group_lifetime_note(cfg, own, "finetune")
    assert note.startswith("[finetune] no Ray cluster was running") and "group 'g' ends with it" in note
    assert "ray start --head" in note
    assert group_lifetime_note(cfg, joined, "finetune") is None
    assert group_lifetime_note(apply_overrides(cfg, {"retrieval.keep_running": False}), own, "tune") is None
    assert group_lifetime_note(apply_overrides(cfg, {"retrieval.mode": "local"}), own, "tune") is None


# ----------------------------------------------------------------------------- a real `ray start --head`


@pytest.fixture(scope="module")
def head():
    """A real head from `ray start --head --block`, owned by this module: SIGTERM at teardown, checked gone."""
    ray_tmpdir = Path(tempfile.mkdtemp(prefix="rhd-", dir="/tmp"))  # short: Ray's socket paths live under it
    port = _free_port()
    log = (ray_tmpdir / "head.log").open("w")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--ray-client-server-port={_free_port()}",
         f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}"],
        cwd=REPO, env={**_env(ray_tmpdir), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    address_file = ray_tmpdir / "ray" / "ray_current_cluster"
    deadline = time.monotonic() + 300  # a head starts in seconds, but in minutes on 2 cores under a full test run
    while not address_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        assert address_file.exists(), (ray_tmpdir / "head.log").read_text()[-3000:]
        yield ray_tmpdir, address_file.read_text().strip()
    finally:
        _stop(proc, ray_tmpdir)
        log.close()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


def _stop(proc: subprocess.Popen, ray_tmpdir: Path) -> None:
    """SIGTERM to `ray start --block` stops exactly its node's processes (never `ray stop`: it would stop every
    cluster on the machine); then check that nothing naming our temp dir is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: nobody else's processes
            proc.wait(timeout=10)
    leftovers = _processes_naming(str(ray_tmpdir))
    for p in leftovers:
        p.kill()
    psutil.wait_procs(leftovers, timeout=10)
    assert not _processes_naming(str(ray_tmpdir)), "processes of the test's head outlived it"


@pytest.mark.slow
def test_a_job_joins_a_running_head_and_the_group_it_starts_outlives_it(head, flat_index):
    ray_tmpdir, address = head
    args = ["--index.directory", str(flat_index), "--retrieval.group", "joined", "--retrieval.actor_num_cpus", "0.1"]
    start = _service(ray_tmpdir, "start", *args)
    assert start.returncode == 0, start.stderr[-3000:]
    assert "Traceback" not in start.stderr and "num_cpus" not in start.stderr, start.stderr[-3000:]
    assert f"[ray] joined the Ray cluster at {address}" in start.stdout.splitlines()
    assert f"serving {flat_index}/v0001 on the Ray cluster at {address}:" in start.stdout
    status = _service(ray_tmpdir, "status", *args)  # a new process, after `start` exited
    assert status.returncode == 0, status.stderr[-3000:]
    assert f"retrieval group 'joined' ({NAMESPACE}) on the Ray cluster at {address}:" in status.stdout
    assert status.stdout.count('"shard"') == 2  # both shards, still serving
    stop = _service(ray_tmpdir, "stop", *args)
    assert stop.returncode == 0, stop.stderr[-3000:]
    assert f"stopped 2 actors of group 'joined' on the Ray cluster at {address}" in stop.stdout
    gone = _service(ray_tmpdir, "status", *args)
    assert gone.returncode == 2
    assert gone.stderr.strip().splitlines()[-1] == (
        f"error: retrieval group 'joined' not found in namespace {NAMESPACE!r} on the Ray cluster at {address}")
