"""Cluster configurations: they parse, carry what their launchers need, and pin the package's Ray.

Fast: nothing here starts a cluster. The launcher configs are checked against the schema Ray
itself ships; the shell snippets they run are syntax-checked and the settings file they write is
generated and read back.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from vilocal_dist.paths import REPO_ROOT

CLUSTER = REPO_ROOT / "cluster"
LAUNCHER_CONFIGS = {"aws.yaml": ("aws", "s3://"), "gcp.yaml": ("gcp", "gs://")}
KUBERAY = CLUSTER / "kuberay"
EXPECTED_FILES = {"aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/mlflow.yaml"}

#: Top-level keys every cluster-launcher config here must set.
LAUNCHER_REQUIRED = (
    "cluster_name", "max_workers", "docker", "provider", "auth", "available_node_types",
    "head_node_type", "file_mounts", "setup_commands", "head_start_ray_commands",
    "worker_start_ray_commands",
)  # fmt: skip
#: Keys of a KubeRay cluster spec (RayCluster.spec and RayJob.spec.rayClusterSpec).
RAY_CLUSTER_SPEC_REQUIRED = ("rayVersion", "authOptions", "headGroupSpec", "workerGroupSpecs")
WORKER_GROUP_REQUIRED = ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template")
RAYJOB_SPEC_REQUIRED = ("entrypoint", "runtimeEnvYAML", "rayClusterSpec", "shutdownAfterJobFinishes")
#: The Secret holding the Ray token (created by the command in cluster/README.md).
TOKEN_SECRET = "vilocal-ray-token"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def pinned_ray_version() -> str:
    """'2.60.0' from the dependency ``ray[...]==2.60.0``."""
    pins = [m for d in pyproject()["project"]["dependencies"] if (m := re.fullmatch(r"ray(\[[^\]]*\])?==(\S+)", d))]
    assert len(pins) == 1, "pyproject.toml must pin ray exactly once (ray[...]==X.Y.Z)"
    return pins[0].group(2)


RAY_VERSION = pinned_ray_version()
PACKAGE_VERSION = pyproject()["project"]["version"]
#: Tag of the KubeRay image built by cluster/Dockerfile (registry and name are the user's choice).
IMAGE_TAG = f"{PACKAGE_VERSION}-ray{RAY_VERSION}-py311-gpu"


def load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"
    return docs


def by_kind(path: Path) -> dict[str, dict[str, Any]]:
    docs = load_docs(path)
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs), f"{path}: one document per kind expected"
    return kinds


def bash_syntax_ok(command: str) -> bool:
    return subprocess.run(["bash", "-n", "-c", command], capture_output=True).returncode == 0


def launcher(name: str) -> dict[str, Any]:
    return load_docs(CLUSTER / name)[0]


def launcher_settings(config: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """Run the setup command that writes the nodes' settings file (redirected), and source it."""
    writer = next(c for c in config["setup_commands"] if "/home/ray/vilocal/env.sh" in c)
    subprocess.run(["bash", "-c", writer.replace("/home/ray/vilocal", str(tmp_path))], check=True)
    done = subprocess.run(
        ["bash", "-c", f". {shlex.quote(str(tmp_path / 'env.sh'))} && env -0"],
        capture_output=True, check=True, env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    return dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)


def test_every_cluster_yaml_parses() -> None:
    found = {p.relative_to(CLUSTER).as_posix() for p in [*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")]}
    assert EXPECTED_FILES <= found, f"missing: {EXPECTED_FILES - found}"
    for name in sorted(found):
        load_docs(CLUSTER / name)


def test_every_ray_version_named_under_cluster_is_the_pinned_one() -> None:
    patterns = (
        r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)",  # base images
        r"\bray(?:\[[^\]]*\])?==(\d+\.\d+\.\d+)",  # pip pins
        r"rayVersion:\s*[\"']?(\d+\.\d+\.\d+)",  # KubeRay
        r"-ray(\d+\.\d+\.\d+)-",  # our image tag
    )
    seen = {}
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file()):
        text = path.read_text()
        for pattern in patterns:
            for version in re.findall(pattern, text):
                seen.setdefault(version, set()).add(path.relative_to(CLUSTER).as_posix())
    assert set(seen) == {RAY_VERSION}, f"pyproject pins ray {RAY_VERSION}; cluster/ names {seen}"


@pytest.mark.parametrize("name", sorted(LAUNCHER_CONFIGS))
def test_launcher_config_matches_rays_schema(name: str) -> None:
    import jsonschema  # ships with ray[default], like the schema itself
    import ray.autoscaler

    config = launcher(name)
    missing = [k for k in LAUNCHER_REQUIRED if k not in config]
    assert not missing, f"{name} lacks {missing}"
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == LAUNCHER_CONFIGS[name][0]


@pytest.mark.parametrize("name", sorted(LAUNCHER_CONFIGS))
def test_launcher_config_has_cpu_head_and_bounded_gpu_workers(name: str) -> None:
    config = launcher(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is CPU only"
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers and all(w["resources"]["GPU"] >= 1 for w in workers.values())
    for key, worker in workers.items():
        assert 0 <= worker["min_workers"] <= worker["max_workers"] <= config["max_workers"], key
    assert config["docker"]["image"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"


@pytest.mark.parametrize("name", sorted(LAUNCHER_CONFIGS))
def test_launcher_shell_commands_are_valid_bash(name: str) -> None:
    config = launcher(name)
    keys = ("initialization_commands", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    for command in (c for k in keys for c in config.get(k, [])):
        assert bash_syntax_ok(command), f"{name}: not valid bash: {command}"


@pytest.mark.parametrize("name", sorted(LAUNCHER_CONFIGS))
def test_launcher_settings_point_at_shared_storage_and_token(name: str, tmp_path: Path) -> None:
    config = launcher(name)
    scheme = LAUNCHER_CONFIGS[name][1]
    env = launcher_settings(config, tmp_path)
    assert env["VILOCAL_STORAGE"].startswith(scheme)
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith(scheme)
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith(("sqlite:////", "postgresql://", "mysql://"))
    assert env["RAY_AUTH_MODE"] == "token"
    token_path = env["RAY_AUTH_TOKEN_PATH"].replace(str(tmp_path), "/home/ray/vilocal")
    assert config["file_mounts"][token_path] == "~/.ray/auth_token"


@pytest.mark.parametrize("name", sorted(LAUNCHER_CONFIGS))
def test_launcher_installs_the_package_wheel_and_starts_mlflow_on_the_head(name: str) -> None:
    config = launcher(name)
    wheel = f"vilocal_dist-{PACKAGE_VERSION}-py3-none-any.whl"
    assert any("pip install" in c and wheel in c for c in config["setup_commands"]), f"no pip install of {wheel}"
    head = config["head_start_ray_commands"]
    mlflow = [c for c in head if "mlflow server" in c]
    assert mlflow and all(f in mlflow[0] for f in ("--artifacts-destination", "--backend-store-uri", "--allowed-hosts"))
    starts = [c for c in head if "ray start --head" in c]
    assert starts and "/home/ray/vilocal/env.sh" in starts[0] and "MLFLOW_TRACKING_URI" in starts[0]
    workers = [c for c in config["worker_start_ray_commands"] if "ray start --address=$RAY_HEAD_IP" in c]
    assert workers and "/home/ray/vilocal/env.sh" in workers[0] and "MLFLOW_TRACKING_URI" in workers[0]


def mlflow_service_uri() -> str:
    service = by_kind(KUBERAY / "mlflow.yaml")["Service"]
    return f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def check_ray_cluster_spec(spec: dict[str, Any], where: str) -> None:
    missing = [k for k in RAY_CLUSTER_SPEC_REQUIRED if k not in spec]
    assert not missing, f"{where} lacks {missing}"
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    pods = [head["template"]["spec"]]
    for group in spec["workerGroupSpecs"]:
        missing = [k for k in WORKER_GROUP_REQUIRED if k not in group]
        assert not missing, f"{where} worker group lacks {missing}"
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        gpus = [int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in group["template"]["spec"]["containers"]]
        assert gpus[0] >= 1, f"{where}: worker group {group['groupName']} asks for no GPU"
        pods.append(group["template"]["spec"])
    for pod in pods:
        ray_container = pod["containers"][0]
        assert ray_container["image"].rsplit(":", 1)[1] == IMAGE_TAG
        assert "ray stop" in " ".join(ray_container["lifecycle"]["preStop"]["exec"]["command"])
        assert pod["serviceAccountName"] == by_kind(KUBERAY / "mlflow.yaml")["ServiceAccount"]["metadata"]["name"]


def test_raycluster_manifest() -> None:
    cluster = by_kind(KUBERAY / "raycluster.yaml")["RayCluster"]
    check_ray_cluster_spec(cluster["spec"], "raycluster.yaml")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert env["MLFLOW_TRACKING_URI"] == mlflow_service_uri()
    assert "VILOCAL_STORAGE" in env


def test_rayjob_manifest() -> None:
    from vilocal_dist.cli.main import SUBCOMMANDS

    job = by_kind(KUBERAY / "rayjob.yaml")["RayJob"]["spec"]
    missing = [k for k in RAYJOB_SPEC_REQUIRED if k not in job]
    assert not missing, f"rayjob.yaml lacks {missing}"
    check_ray_cluster_spec(job["rayClusterSpec"], "rayjob.yaml")
    command = shlex.split(job["entrypoint"])
    assert command[:3] == ["python", "-m", "vilocal_dist"] and command[3] in SUBCOMMANDS, job["entrypoint"]
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == mlflow_service_uri()
    assert "VILOCAL_STORAGE" in runtime_env["env_vars"]


def test_mlflow_manifest_serves_the_names_clients_use() -> None:
    kinds = by_kind(KUBERAY / "mlflow.yaml")
    assert {"ServiceAccount", "PersistentVolumeClaim", "Deployment", "Service"} <= set(kinds)
    deployment, service = kinds["Deployment"], kinds["Service"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    assert container["command"][:2] == ["mlflow", "server"]
    args = dict(a.split("=", 1) for a in container["args"])
    assert args["--backend-store-uri"].startswith("sqlite:////"), "relative SQLite paths get lost"
    port = service["spec"]["ports"][0]["port"]
    assert int(args["--port"]) == port
    # MLflow 3 rejects Host headers outside --allowed-hosts (fnmatch patterns when they hold '*').
    allowed = args["--allowed-hosts"].split(",")
    clients = (urlparse(mlflow_service_uri()).netloc, f"mlflow.vilocal.svc.cluster.local:{port}", f"localhost:{port}")
    for host in clients:
        assert any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed), host


def test_dockerfile_builds_on_the_pinned_ray_image() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_VERSION)}-py311-gpu$", text, re.M)
    assert f":{IMAGE_TAG} " in text, "the documented build tag must be the one the manifests use"


def test_dockerfile_installs_the_package_non_editable_with_its_data() -> None:
    """The image's install is the one tests/test_install.py runs: `pip install <src>`, no -e, and
    the specs come along inside vilocal_dist/ (the build context admits nothing else)."""
    text = (CLUSTER / "Dockerfile").read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all(" -e " not in line and "--editable" not in line for line in installs)
    assert "COPY --chown=1000:100 vilocal_dist /home/ray/src/vilocal_dist/vilocal_dist" in text
    data = pyproject()["tool"]["setuptools"]["package-data"]["vilocal_dist"]
    package = REPO_ROOT / "vilocal_dist"
    shipped = {p for p in (package / "sweeps").rglob("*") if p.is_file() and p.suffix in (".yaml", ".md")}
    covered = {p for pattern in data for p in package.glob(pattern)}  # setuptools globs recursively too
    assert shipped and shipped <= covered, sorted(map(str, shipped - covered))


def test_readme_and_manifests_name_registered_subcommands() -> None:
    from vilocal_dist.cli.main import SUBCOMMANDS

    texts = [(CLUSTER / "README.md").read_text(), (KUBERAY / "rayjob.yaml").read_text()]
    named = {m for t in texts for m in re.findall(r"python -m vilocal_dist ([a-z][\w-]*)", t)}
    assert named and named <= set(SUBCOMMANDS), f"unknown subcommands: {named - set(SUBCOMMANDS)}"
    assert f"create secret generic {TOKEN_SECRET} " in texts[0]


def test_local_launcher_is_executable_bash_that_stops_only_its_own_processes() -> None:
    script = CLUSTER / "local.sh"
    assert os.access(script, os.X_OK)
    assert bash_syntax_ok(script.read_text())
    code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\bray stop\b|\bpkill\b|\bkillall\b", code), "stop by pid, never by name"


def test_job_uploads_leave_outputs_and_environments_behind() -> None:
    # `ray job submit --working-dir .` honours .gitignore.
    ignored = {line.strip() for line in (REPO_ROOT / ".gitignore").read_text().splitlines()}
    assert {"runs/", "venv/", ".venv/", "dist/"} <= ignored


def declared_node_types(env: dict[str, str]) -> dict[str, tuple[float, float, int]]:
    from vilocal_dist.distributed.resources import NODE_TYPES_ENV, node_types_from_config

    types = node_types_from_config({"available_node_types": json.loads(env[NODE_TYPES_ENV])})
    return {t.name: (t.cpus, t.gpus, t.max_count) for t in types}


def worker_groups(spec: dict[str, Any]) -> dict[str, tuple[float, float, int]]:
    out = {}
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        out[group["groupName"]] = (float(limits["cpu"]), float(limits.get("nvidia.com/gpu", 0)), group["maxReplicas"])
    return out


def test_kuberay_declares_the_node_types_its_autoscaler_may_start() -> None:
    """KubeRay's autoscaler reads the worker groups from Kubernetes, out of the driver's sight:
    VILOCAL_NODE_TYPES tells `--use-gpu auto` and the GPU checks, and must match the groups."""
    cluster = by_kind(KUBERAY / "raycluster.yaml")["RayCluster"]["spec"]
    head_env = {e["name"]: e.get("value") for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert declared_node_types(head_env) == worker_groups(cluster)
    job = by_kind(KUBERAY / "rayjob.yaml")["RayJob"]["spec"]
    job_env = yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]
    assert declared_node_types(job_env) == worker_groups(job["rayClusterSpec"])
