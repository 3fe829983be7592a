"""cluster.yaml: valid for `ray up` by Ray's own validator, closed to the internet except SSH, and shaped
so retrieval actors land on retrieval nodes and training on GPU nodes.

Nothing here reaches AWS: the security-group test runs Ray's own AWS bootstrap against moto's
in-process EC2 (skipped where moto is not installed); everything else is offline.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import parse_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
WORLD = ("0.0.0.0/0", "::/0")


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _ray_up_checks(config: dict) -> dict:
    """What `ray up` does to a config before touching the cloud: fill Ray's defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _worker_types(cluster: dict) -> dict[str, dict]:
    return {name: t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]}


def test_cluster_yaml_passes_rays_own_validator(cluster):
    import ray.autoscaler

    assert (Path(ray.autoscaler.__file__).parent / "ray-schema.json").is_file()  # the schema validate_config uses
    prepared = _ray_up_checks(cluster)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("mistake", [
    "top-level key misspelt", "node-type key misspelt", "security-group key misspelt", "resource count as a string",
])
def test_a_mistyped_copy_fails_validation(cluster, mistake):
    import jsonschema

    broken = copy.deepcopy(cluster)
    if mistake == "top-level key misspelt":
        broken["idle_timeout_minute"] = broken.pop("idle_timeout_minutes")
    elif mistake == "node-type key misspelt":
        broken["available_node_types"]["retrieval"]["min_worker"] = 1
    elif mistake == "security-group key misspelt":
        broken["provider"]["security_group"]["IpPermission"] = []
    else:
        broken["available_node_types"]["retrieval"]["resources"]["retrieval_node"] = "16"
    with pytest.raises(jsonschema.ValidationError):
        _ray_up_checks(broken)


def test_no_extra_ingress_rule_opens_a_port_to_the_internet(cluster):
    """Ray adds SSH-from-anywhere itself; whatever the config adds must not open anything else to the world."""
    for rule in cluster["provider"].get("security_group", {}).get("IpPermissions", []):
        ranges = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        ranges += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        if any(r in WORLD for r in ranges):
            assert (rule.get("FromPort"), rule.get("ToPort")) == (22, 22), rule
    # A node type with its own SecurityGroupIds would bypass the group Ray configures (and this test).
    for name, node_type in cluster["available_node_types"].items():
        assert "SecurityGroupIds" not in node_type["node_config"], name


def test_security_group_ray_creates_opens_only_ssh_to_the_internet(cluster, monkeypatch, tmp_path):
    """Ray's own AWS bootstrap (subnets + security group) against moto's fake EC2; then read the rules back."""
    moto = pytest.importorskip("moto")
    import boto3

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")  # moto's dummies: nothing here may ever reach real AWS
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    region = cluster["provider"]["region"]
    with moto.mock_aws():
        from ray.autoscaler._private.aws import config as aws_config

        bootstrapped = aws_config._configure_security_group(aws_config._configure_subnet(_ray_up_checks(cluster)))
        node_types = bootstrapped["available_node_types"].values()
        group_ids = {g for t in node_types for g in t["node_config"]["SecurityGroupIds"]}
        groups = boto3.client("ec2", region_name=region).describe_security_groups(GroupIds=sorted(group_ids))
    assert [g["GroupName"] for g in groups["SecurityGroups"]] == [cluster["provider"]["security_group"]["GroupName"]]

    world_open, intracluster = [], []
    for rule in groups["SecurityGroups"][0]["IpPermissions"]:
        ranges = [r["CidrIp"] for r in rule["IpRanges"]] + [r["CidrIpv6"] for r in rule["Ipv6Ranges"]]
        if any(r in WORLD for r in ranges):
            world_open.append((rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort")))
        if rule["UserIdGroupPairs"]:
            intracluster.append({p["GroupId"] for p in rule["UserIdGroupPairs"]})
    assert world_open == [("tcp", 22, 22)]  # not 8265 (dashboard/Jobs API), 10001 (Ray Client), 6379 (GCS)
    assert intracluster == [group_ids]  # the nodes still reach each other on every port


def test_retrieval_nodes_offer_the_resource_the_retrieval_group_asks_for(cluster):
    config, _ = parse_config(["--retrieval.actor_resources", "{retrieval_node: 1}"], "docs/cluster.md's command")
    (resource,) = config.retrieval.actor_resources
    offering = {name for name, t in cluster["available_node_types"].items() if t["resources"].get(resource, 0) >= 1}
    assert offering == {"retrieval"}  # so retrieval actors can land there and nowhere else
    retrieval = cluster["available_node_types"]["retrieval"]
    assert retrieval["min_workers"] >= 1  # the index is built and served there from the start
    assert retrieval["resources"].get("GPU", 0) == 0


def test_training_nodes_have_gpus_and_the_head_takes_no_work(cluster):
    gpu_types = [name for name, t in _worker_types(cluster).items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types == ["gpu_train"]
    assert cluster["available_node_types"][cluster["head_node_type"]]["resources"] == {"CPU": 0}


def test_worker_counts_and_idle_timeout_are_set(cluster):
    workers = _worker_types(cluster)
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert cluster["max_workers"] >= sum(t["min_workers"] for t in workers.values())
    assert cluster["idle_timeout_minutes"] > 0
    assert cluster["provider"]["cache_stopped_nodes"] is True


def test_setup_commands_install_the_project_that_file_mounts_carry(cluster):
    (code_dir,) = [remote for remote, local in cluster["file_mounts"].items() if local == "."]
    assert any(f"pip install -e {code_dir}" in cmd for cmd in cluster["setup_commands"])
    excluded = " ".join(cluster["rsync_exclude"])
    assert ".git" in excluded and "runs/" in excluded
    assert ".rayignore" in cluster["rsync_filter"] and (REPO / ".rayignore").is_file()


def test_every_node_uses_token_authentication(cluster):
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("export RAY_AUTH_MODE=token" in cmd for cmd in cluster["initialization_commands"])


def test_every_node_passes_retrieval_results_inline_like_the_local_clusters(cluster):
    from pipeline.ray_session import INLINE_RESULT_BYTES, INLINE_RESULT_BYTES_ENV

    starts = [c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert f"{INLINE_RESULT_BYTES_ENV}={INLINE_RESULT_BYTES} ray start" in command
