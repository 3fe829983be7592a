"""configs/kubernetes/rayjob.yaml: the RayJob's entrypoint runs a config that loads, and the Ray cluster it creates
is shaped the way that config needs (retrieval actors' resource offered only by the retrieval pods, enough GPU
pods for the training workers, every path of the config on the volume every pod mounts).

Offline: no Kubernetes here. The manifest's keys were checked once against KubeRay's RayJob CRD (the file's
header says which); these tests keep the manifest and the run configuration from drifting apart.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.config import RunConfig, parse_config

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "configs" / "kubernetes" / "rayjob.yaml"
CODE_IN_IMAGE = "/home/ray/rag"  # where the image holds the project (docs/cluster.md's Dockerfile)


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


@pytest.fixture(scope="module")
def run_config(manifest) -> RunConfig:
    command = shlex.split(manifest["RayJob"]["spec"]["entrypoint"])
    assert command[:2] == ["python", f"{CODE_IN_IMAGE}/jobs/finetune.py"]
    argv = [arg.replace(CODE_IN_IMAGE, str(REPO)) for arg in command[2:]]
    config, _ = parse_config(argv, "the RayJob's entrypoint")
    return config


def _workers(manifest) -> dict[str, dict]:
    return {g["groupName"]: g for g in manifest["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]}


def _container(group: dict) -> dict:
    (container,) = group["template"]["spec"]["containers"]
    return container


def test_retrieval_resource_is_offered_by_the_retrieval_pods_only(manifest, run_config):
    wanted = set(run_config.retrieval.actor_resources)
    assert wanted, "the run config must pin retrieval actors to retrieval nodes"
    offering = {name for name, g in _workers(manifest).items() if wanted <= set(g.get("resources", {}))}
    assert offering == {"retrieval"}
    retrieval = _workers(manifest)["retrieval"]
    per_pod = min(float(retrieval["resources"][key]) for key in wanted)
    actors = run_config.index.shards * run_config.retrieval.replicas
    assert per_pod * retrieval["replicas"] >= actors * max(run_config.retrieval.actor_resources.values())
    assert retrieval["replicas"] >= 2, "replicas of a shard need two pods to spread over"


def test_gpu_pods_hold_every_training_worker(manifest, run_config):
    assert run_config.train.use_gpu
    gpu_pods = sum(g["replicas"] * int(_container(g)["resources"]["limits"].get("nvidia.com/gpu", 0))
                   for g in _workers(manifest).values())
    assert gpu_pods >= run_config.train.num_workers


def test_head_takes_no_work(manifest):
    head = manifest["RayJob"]["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"


def test_every_path_of_the_run_is_on_the_volume_every_pod_mounts(manifest, run_config):
    claim = manifest["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    spec = manifest["RayJob"]["spec"]["rayClusterSpec"]
    pods = [spec["headGroupSpec"], *_workers(manifest).values()]
    mounts = set()
    for pod in pods:
        volumes = {v["name"]: v for v in pod["template"]["spec"]["volumes"]}
        (mount,) = _container(pod)["volumeMounts"]
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        mounts.add(mount["mountPath"])
    (shared,) = mounts
    paths = [run_config.knowledge_base.documents, run_config.index.directory, run_config.data.train,
             run_config.data.dev, run_config.train.output_dir, run_config.tune.output_dir]
    assert all(Path(p).is_relative_to(shared) for p in paths), paths
