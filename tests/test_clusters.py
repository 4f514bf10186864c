"""The cluster files: the autoscaler YAMLs pass Ray's own preparation and validation (its JSON schema, shipped with
Ray), the KubeRay manifests carry what the RayCluster / RayJob CRDs require, every entrypoint and documented
`ray job submit` command parses with our CLI and names a valid configuration, and the security defaults hold
(token authentication, dashboard not exposed, no credentials in the files). Nothing here starts Ray."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from baldro_ray.cli import build_parser
from baldro_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
AUTOSCALER_YAMLS = ["aws.yaml", "gcp.yaml", "local.yaml"]
KUBERAY = CLUSTERS / "kuberay"
SHARED = "/mnt/shared"
# What a credential looks like in a file: AWS access keys, private keys, literal tokens and passwords.
SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",
    r"aws_secret_access_key",
    r"BEGIN [A-Z ]*PRIVATE KEY",
    r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[A-Za-z0-9+/=_-]{16,}",
    r"\bvalue:\s*['\"]?[A-Za-z0-9+/=_-]{32,}",
    r"password\s*[:=]",
    r"hf_[A-Za-z0-9]{30,}",
]


def _autoscaler(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTERS / name).read_text())


def _prepared(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's own path from a user's YAML to a validated config (the one `ray up` takes, minus the cloud calls)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _entrypoint_config(command: str) -> Any:
    """Parse ``baldro-ray ...`` with our CLI's parser and load the configuration it names."""
    argv = shlex.split(command)
    assert argv[0] == "baldro-ray", command
    args, extra = build_parser().parse_known_args(argv[1:])
    assert all("=" in arg and not arg.startswith("-") for arg in extra), extra  # what main() accepts
    assert args.command in {"unlearn", "eval", "quickstart", "finetune", "config"}, args.command
    return load_config(args.config, [*args.overrides, *extra])


@pytest.mark.parametrize("name", AUTOSCALER_YAMLS)
def test_autoscaler_yaml_passes_rays_validation(name: str) -> None:
    prepared = _prepared(_autoscaler(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_the_validation_rejects_a_wrong_key() -> None:
    import jsonschema

    broken = _autoscaler("aws.yaml")
    broken["idle_timeout_minute"] = 5
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        _prepared(broken)


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_yamls_have_a_cpu_head_and_an_autoscaling_8_gpu_group(name: str) -> None:
    config = _autoscaler(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head schedules no work
    (gpu,) = [t for key, t in types.items() if key != config["head_node_type"]]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    machine = gpu["node_config"].get("InstanceType") or gpu["node_config"].get("machineType")
    assert machine in {"p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "a2-ultragpu-8g", "a3-highgpu-8g"}
    assert config["docker"]["image"].startswith("rayproject/ray:2.60")
    assert any(
        "mount -t nfs" in command and SHARED in command for command in config["initialization_commands"]
    )
    assert f"--volume={SHARED}:{SHARED}" in config["docker"]["run_options"]
    identity = "IamInstanceProfile" if name == "aws.yaml" else "serviceAccounts"
    assert all(identity in t["node_config"] for t in types.values())  # instance roles, never keys


@pytest.mark.parametrize("name", AUTOSCALER_YAMLS)
def test_autoscaler_security_defaults(name: str) -> None:
    config = _autoscaler(name)
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token travels as a file
    assert config["rsync_filter"] == [".gitignore"]
    assert any("pip install" in c and "baldro-ray" in c for c in config["setup_commands"])


def test_aws_ssh_is_open_to_one_range_only() -> None:
    permissions = _autoscaler("aws.yaml")["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in permissions] == [(22, 22)]
    assert all(r["CidrIp"] != "0.0.0.0/0" for p in permissions for r in p["IpRanges"])


@pytest.mark.parametrize("path", sorted(p for p in CLUSTERS.rglob("*") if p.is_file()), ids=lambda p: p.name)
def test_no_credentials_in_cluster_files(path: Path) -> None:
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), (path.name, pattern)


def _kuberay(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBERAY / name).read_text()) if doc]


def _check_cluster_spec(spec: dict[str, Any]) -> None:
    """The fields the RayCluster CRD requires, plus our security and storage defaults."""
    assert spec["rayVersion"].startswith("2.60")
    assert spec["authOptions"] == {"mode": "token"}  # the operator generates the token into a Secret
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # never a LoadBalancer / NodePort
    assert isinstance(head["rayStartParams"], dict) and head["rayStartParams"]["num-cpus"] == "0"
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # the CRD takes strings
    pods = [head["template"]["spec"]]
    assert spec["workerGroupSpecs"], "no worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] == 0 <= group["replicas"] <= group["maxReplicas"]
        pods.append(group["template"]["spec"])
    assert spec["enableInTreeAutoscaling"] is True
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for c in pods[1]["containers"]]
    assert gpus == ["8"]
    for pod in pods:
        (container,) = pod["containers"]
        assert container["name"] and container["image"]
        assert {"name": "shared", "mountPath": SHARED} in container["volumeMounts"]
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        ]
        assert claims == ["baldro-ray-shared"]
        for variable in container.get("env", []):
            assert "value" not in variable or not variable["name"].endswith(("TOKEN", "KEY", "PASSWORD"))


def test_raycluster_manifest() -> None:
    claim, cluster = _kuberay("raycluster.yaml")
    assert (claim["apiVersion"], claim["kind"]) == ("v1", "PersistentVolumeClaim")
    assert (
        claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["metadata"]["name"] == "baldro-ray-shared"
    )
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["metadata"]["name"]
    _check_cluster_spec(cluster["spec"])


def test_rayjob_manifest_and_its_entrypoint() -> None:
    (job,) = _kuberay("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob") and job["metadata"]["name"]
    spec = job["spec"]
    _check_cluster_spec(spec["rayClusterSpec"])
    # one cluster definition: the RayJob's is the RayCluster's
    assert spec["rayClusterSpec"] == _kuberay("raycluster.yaml")[1]["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    config = _entrypoint_config(spec["entrypoint"])
    assert config.output_dir.startswith(SHARED) and config.trainer.use_gpu


def _documented_submissions() -> list[str]:
    """Every `ray job submit ... -- baldro-ray ...` command in the docs and cluster files (continuations joined)."""
    commands = []
    for path in [
        REPO / "docs" / "cluster.md",
        REPO / "README.md",
        *CLUSTERS.rglob("*.yaml"),
        *(REPO / "configs").glob("*"),
    ]:
        text = re.sub(r"\\\n[#\s]*", " ", path.read_text())
        commands += [
            m.group(1).strip() for m in re.finditer(r"ray job submit [^\n]*? --\s+(baldro-ray [^\n`]*)", text)
        ]
    return commands


def test_documented_job_submissions_parse_and_name_valid_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # `--config configs/...` paths are relative to the working directory shipped
    commands = _documented_submissions()
    assert len(commands) >= 5, commands
    for command in commands:
        config = _entrypoint_config(command.replace("$OUT", "/mnt/shared/baldro-ray/outputs"))
        assert config.output_dir.startswith(SHARED) or "embedded" in command, command
