"""Jobs on a Ray cluster for real: `ray job submit --working-dir .` against a head started by `ray start`.

The module starts its own single-node cluster (the laptop rehearsal of docs/cluster.md): its own
ports, its own `--temp-dir` (so its `ray_current_cluster` file cannot steer anyone's `ray.init()`,
including the pytest session's own cluster), token authentication with a token made up here, and
the custom resource `retrieval_node` that cluster.yaml's retrieval nodes offer.

It is stopped without `ray stop`, on purpose: `ray stop` kills every Ray process on the machine
(it matches process names, not a cluster), which would take down the session cluster of this very
pytest run and any other developer's or CI job's cluster on a shared machine. Instead the head runs
under `ray start --block`, whose SIGTERM handler shuts down exactly the processes of that node (what
`ray stop` does on a dedicated cluster node); a last sweep kills only processes whose command line
names this cluster's temp dir. So the module needs no ordering and no process of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.index.manifest import read_manifest
from pipeline.index.versions import resolve_version
from tests.conftest import write_corpus

pytestmark = pytest.mark.slow  # a whole cluster and five jobs: minutes, not seconds

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"
GROUP, NAMESPACE = "jobs-test", "rag-job-submit-test"

# What every job gets, as `--runtime-env-json` (docs/cluster.md shows the same): nothing reaches the Hub,
# whatever the cluster's own environment says.
RUNTIME_ENV = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                            "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}}
# The retrieval options of every job: docs/cluster.md's resource request, and a quarter CPU per actor so the
# group, a training worker and Ray Data fit in the cluster's 2 CPUs at once.
RETRIEVAL = ["--retrieval.group", GROUP, "--retrieval.namespace", NAMESPACE,
             "--retrieval.actor_resources", "{retrieval_node: 1}", "--retrieval.actor_num_cpus", "0.25"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SubmittedJob:
    id: str
    logs: str  # the job's own output (driver and the actors/tasks it started), start to end


@dataclass
class JobCluster:
    address: str  # the Jobs API, as `ray job submit --address` takes it
    gcs_address: str
    token: str
    env: dict  # environment of every client command (the token, no RAY_ADDRESS)

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([RAY, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"`ray {' '.join(args)}` exited {proc.returncode}:\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def resource_usage(self, expected: str, timeout_s: float = 60) -> str:
        """`ray status` output, asked again until it shows `expected` (it reads the autoscaler's periodic
        snapshot, so a resource taken or released a moment ago shows up after a delay)."""
        deadline, usage = time.monotonic() + timeout_s, ""
        while expected not in usage and time.monotonic() < deadline:
            usage = self.run("status", "--address", self.gcs_address).stdout
            if expected not in usage:
                time.sleep(2)
        return usage

    def api(self, path: str):
        """GET the Jobs REST API (what the `ray job` commands call), with the cluster's token."""
        request = urllib.request.Request(f"{self.address}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def submit(self, *entrypoint: str, timeout: float = 150) -> SubmittedJob:
        """`ray job submit --working-dir .` as docs/cluster.md runs it, then wait for the job to end.

        --no-wait and polling rather than the command's own log tail: that websocket can drop on a
        loaded machine and end the command early, which says nothing about the job.
        """
        job_id = f"rag-test-{uuid.uuid4().hex[:8]}"
        command = ("job", "submit", "--address", self.address, "--submission-id", job_id, "--no-wait",
                   "--working-dir", ".", "--runtime-env-json", json.dumps(RUNTIME_ENV), "--", *entrypoint)
        for attempt in range(30):  # the job agent of a new head starts some seconds after the dashboard answers
            submitted = self.run(*command, check=False)
            if submitted.returncode == 0 or "No available agent" not in submitted.stderr + submitted.stdout:
                break
            time.sleep(2)
        assert submitted.returncode == 0, f"ray job submit failed: {submitted.stderr[-3000:]}"
        deadline, status = time.monotonic() + timeout, "PENDING"
        while status not in ("SUCCEEDED", "FAILED", "STOPPED"):
            if time.monotonic() > deadline:
                self.run("job", "stop", "--address", self.address, job_id, check=False)
                break
            time.sleep(1)
            try:
                status = self.api(f"/api/jobs/{job_id}")["status"]
            except (urllib.error.URLError, TimeoutError):
                pass  # a busy dashboard: ask again
        logs = self.api(f"/api/jobs/{job_id}/logs")["logs"]
        assert status == "SUCCEEDED", f"job {' '.join(entrypoint)}: {status} ({timeout}s limit); logs:\n{logs[-6000:]}"
        return SubmittedJob(job_id, logs)


def _client_env(token: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "HF_", "TRANSFORMERS_")) and k != "PYTHONPATH"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)  # the cluster's token, as on a laptop
    return env


def _wait_for_dashboard(url: str, token: str, head: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"dashboard at {url} not up after {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


def _stop_head(head: subprocess.Popen, temp_dir: Path) -> None:
    """SIGTERM to `ray start --block` stops exactly its node's processes; then sweep what names our temp dir."""
    import psutil

    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # its own session (start_new_session): nobody else's processes
            head.wait(timeout=10)
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp_dir) in part for part in proc.info["cmdline"] or []):
                proc.kill()
                leftovers.append(proc)
        except psutil.Error:
            pass
    psutil.wait_procs(leftovers, timeout=10)


@pytest.fixture(scope="module")
def job_cluster():
    # A short temp dir: Ray's socket paths live under it and Unix sockets allow ~107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayjobs-", dir="/tmp"))
    token = secrets.token_hex(32)
    env = _client_env(token)
    gcs_port, dashboard_port = _free_port(), _free_port()
    log = temp_dir.with_suffix(".log")
    log_file = log.open("w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
         "--num-cpus=2", "--resources", json.dumps({"retrieval_node": 4}), "--object-store-memory=1000000000",
         # Ports with fixed defaults would clash with another cluster on this machine:
         f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},  # SIGTERM stops at once, as `ray stop` does
    )
    cluster = JobCluster(f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}", token, env)
    try:
        _wait_for_dashboard(cluster.address, token, head, log)
        yield cluster
    finally:
        _stop_head(head, temp_dir)
        log_file.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def built_index(job_cluster, tmp_path_factory):
    """The index built by a `ray job submit` of jobs/build_index.py; returns (directory, job)."""
    work = tmp_path_factory.mktemp("jobs")
    corpus = work / "documents.jsonl"
    write_corpus(corpus, documents=30)
    directory = work / "index"
    job = job_cluster.submit("python", "jobs/build_index.py", "--knowledge_base.documents", str(corpus),
                             "--index.directory", str(directory), "--index.embed_batch_size", "16")
    return directory, job


@pytest.fixture(scope="module")
def retrieval_group(job_cluster, built_index):
    """The group started by a `ray job submit` of `jobs/retrieval_service.py start`; returns that job."""
    directory, _ = built_index
    # Nothing to tear down: the group goes with the module's cluster.
    return job_cluster.submit("python", "jobs/retrieval_service.py", "start", "--index.directory", str(directory),
                              *RETRIEVAL, timeout=90)


def _members(logs: str) -> list[dict]:
    """The JSON lines retrieval_service prints, one per actor."""
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


def test_job_gets_runtime_env_and_a_working_dir_without_ignored_files(job_cluster):
    probe = ("import json, os, pipeline; print('PROBE', json.dumps({'offline': os.environ.get('HF_HUB_OFFLINE'), "
             "'files': sorted(os.listdir('.')), 'pipeline': os.path.dirname(pipeline.__file__)}))")
    logs = job_cluster.submit("python", "-c", probe, timeout=60).logs
    seen = json.loads(logs.split("PROBE ", 1)[1].splitlines()[0])
    assert seen["offline"] == "1"  # from the runtime env: the cluster itself was started without it
    assert {"jobs", "pipeline", "cluster.yaml"} <= set(seen["files"])
    assert not {".git", "runs", ".pytest_cache"} & set(seen["files"])  # .rayignore / .gitignore kept them home
    assert Path(seen["pipeline"]).parent != REPO  # the uploaded copy, not this checkout


def test_build_index_job_writes_the_index_directory(job_cluster, built_index):
    directory, job = built_index
    assert f"[build_index] wrote {directory}" in job.logs
    assert read_manifest(directory).count >= 30  # every document, long ones split into several passages
    # The same job as `ray job status` / `ray job logs` see it afterwards.
    address = ["--address", job_cluster.address]
    assert f"Job '{job.id}' succeeded" in job_cluster.run("job", "status", job.id, *address).stdout
    assert f"[build_index] wrote {directory}" in job_cluster.run("job", "logs", job.id, *address).stdout


def test_retrieval_service_start_job_holds_retrieval_node_resources(job_cluster, retrieval_group, built_index):
    directory, _ = built_index
    assert f"retrieval group {GROUP!r}" in retrieval_group.logs
    # Actors report the version directory they serve: the location's current one.
    served = [Path(m["index_dir"]).resolve() for m in _members(retrieval_group.logs)]
    assert served == [resolve_version(directory).directory.resolve()]
    # The actor sits on the resource that cluster.yaml's retrieval nodes offer.
    assert "1.0/4.0 retrieval_node" in job_cluster.resource_usage("1.0/4.0 retrieval_node")


def test_retrieval_service_status_job_finds_the_group_from_another_job(job_cluster, retrieval_group, built_index):
    directory, _ = built_index
    members = _members(job_cluster.submit("python", "jobs/retrieval_service.py", "status", *RETRIEVAL, timeout=60).logs)
    assert len(members) == 1 and "error" not in members[0]
    assert members[0]["count"] == read_manifest(directory).count


def test_finetune_job_trains_against_the_running_group(job_cluster, retrieval_group, built_index, tmp_path_factory):
    from pipeline.demo.data import QUICK_READING_STEPS, ensure_demo_data

    directory, _ = built_index
    corpus = directory.parent / "documents.jsonl"
    work = tmp_path_factory.mktemp("finetune")
    demo = ensure_demo_data(work / "demo", reading_steps=QUICK_READING_STEPS)  # for its tiny BART generator and QA rows; the index is the test corpus
    qa = {}
    for split, rows in (("train", 8), ("dev", 4)):
        qa[split] = work / f"{split}.jsonl"
        qa[split].write_text("".join(getattr(demo, split).read_text().splitlines(keepends=True)[:rows]))
    tiny = work / "tiny.yaml"
    tiny.write_text(yaml.safe_dump({
        "knowledge_base": {"documents": str(corpus)},
        "index": {"directory": str(directory)},
        "retrieval": {"keep_running": True},
        "model": {"generator": str(demo.generator), "n_docs": 2},
        "data": {"train": str(qa["train"]), "dev": str(qa["dev"]), "test": str(qa["dev"])},
        "train": {"output_dir": str(work / "run"), "batch_size": 2, "cpus_per_worker": 0.5, "warmup_steps": 0,
                  "eval_max_examples": 4},
    }))
    job = job_cluster.submit("python", "jobs/finetune.py", "--config", str(tiny), *RETRIEVAL,
                             "--train.max_steps", "2", "--train.num_workers", "1", "--train.epochs", "1", timeout=240)
    assert f"[finetune] model (epoch 1, best by dev_exact_match): {work / 'run' / 'model'}" in job.logs
    assert (work / "run" / "model").is_dir() and (work / "run" / "metrics.json").is_file()
    assert f"retrieval group {GROUP!r} ({NAMESPACE}): 1 actor(s)" in job.logs
    # Still one actor on the retrieval resource: training used the group an earlier job started, not a new one.
    assert "1.0/4.0 retrieval_node" in job_cluster.resource_usage("1.0/4.0 retrieval_node")


def test_retrieval_service_stop_job_tears_the_group_down(job_cluster, retrieval_group):
    logs = job_cluster.submit("python", "jobs/retrieval_service.py", "stop", *RETRIEVAL, timeout=60).logs
    assert f"stopped 1 actors of group {GROUP!r}" in logs
    assert "0.0/4.0 retrieval_node" in job_cluster.resource_usage("0.0/4.0 retrieval_node")
