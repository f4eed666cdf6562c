"""The cluster launcher configs (`cluster.yaml`, `cluster-gcp.yaml`) pass the checks `ray up` runs.

`ray up` fills in the provider's defaults and validates the result against the JSON schema Ray
ships (`ray/autoscaler/ray-schema.json`) before it touches the cloud. These tests run the same
functions offline, so a misspelled key fails here instead of minutes into a launch, and then
check what our jobs need from the cluster: the Ray version of the image, the resources of each
node type, the project install, no credentials in the file.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from pipeline.config import DataConfig, RunConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG_NAMES = ["cluster.yaml", "cluster-gcp.yaml"]
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

# vCPUs and GPUs of every machine type the configs use. Add a row when you add a machine type:
# the autoscaler plans from the declared `resources`, so they must match the hardware.
MACHINES: dict[str, tuple[int, int]] = {
    "m6i.2xlarge": (8, 0),
    "m6i.4xlarge": (16, 0),
    "p4d.24xlarge": (96, 8),
    "g5.12xlarge": (48, 4),
    "n2-standard-8": (8, 0),
    "n2-standard-16": (16, 0),
    "a2-highgpu-8g": (96, 8),
}
# The headline job in the README: `jobs/cub_swinl.py --num-workers 16`, one GPU per worker.
HEADLINE_NUM_GPU_WORKERS = 16


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / name).read_text())


def ray_up_checks(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config before any cloud call: fill defaults, then validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def machine_type(node_type: dict[str, Any]) -> str:
    node_config = node_type["node_config"]
    return node_config.get("InstanceType") or node_config["machineType"]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_file_as_written_matches_ray_schema(name: str, schema: dict[str, Any]) -> None:
    jsonschema.validate(load(name), schema)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_passes_ray_up_validation(name: str) -> None:
    prepared = ray_up_checks(load(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    "typo",
    ["top-level key", "node type key", "docker key"],
)
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_misspelled_key_is_rejected(name: str, typo: str, schema: dict[str, Any]) -> None:
    config = load(name)
    if typo == "top-level key":
        config["available_node_type"] = config.pop("available_node_types")
    elif typo == "node type key":
        gpu = config["available_node_types"]["gpu_worker"]
        gpu["min_worker"] = gpu.pop("min_workers")
    else:
        config["docker"]["pull_before_runs"] = config["docker"].pop("pull_before_run")
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        jsonschema.validate(config, schema)
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        ray_up_checks(config)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_docker_image_matches_installed_ray_and_project_python(name: str) -> None:
    image = load(name)["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", image)
    assert match, f"{name}: docker.image={image!r}; want rayproject/ray:<version>-py<XY>-gpu"
    ray_version, py_major, py_minor, _ = match.groups()
    assert ray_version == ray.__version__, (
        f"{name}: image has Ray {ray_version}, this environment {ray.__version__}; "
        "jobs submitted from here would run on another Ray. Update docker.image"
    )
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(p) for p in re.fullmatch(r">=(\d+)\.(\d+)", requires).groups())
    assert (int(py_major), int(py_minor)) >= minimum, f"{name}: image Python below {requires}"


SECRET_PATTERNS = [
    r"aws_access_key_id",
    r"aws_secret_access_key",
    r"aws_session_token",
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"secret",
    r"BEGIN [A-Z ]*PRIVATE KEY",
    r"gcp_credentials",
    r"\"private_key\"",
]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_no_credentials_in_file(name: str) -> None:
    text = (REPO / name).read_text()
    for pattern in SECRET_PATTERNS:
        found = re.search(pattern, text, flags=re.IGNORECASE)
        assert not found, f"{name}: {found.group(0)!r} looks like a credential; use instance roles"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_node_resources_match_hardware(name: str) -> None:
    text = (REPO / name).read_text()
    for type_name, node_type in load(name)["available_node_types"].items():
        machine = machine_type(node_type)
        assert machine in MACHINES, f"{name}: {type_name} uses {machine}; add it to MACHINES"
        num_cpus, num_gpus = MACHINES[machine]
        resources = node_type["resources"]
        low = 0 if type_name == load(name)["head_node_type"] else 1  # the head runs no CPU task
        assert low <= resources.get("CPU", 0) <= num_cpus, f"{name}: {type_name} CPU vs {machine}"
        assert resources.get("GPU", 0) == num_gpus, f"{name}: {type_name} GPU vs {machine}"
        if num_gpus:
            # The comment next to the machine type states the GPU count; keep the two in step.
            comment = re.search(rf"{re.escape(machine)}\s*#\s*(\d+)x", text)
            assert comment and int(comment.group(1)) == num_gpus, f"{name}: comment on {machine}"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_cluster_fits_what_the_jobs_ask_for(name: str) -> None:
    config = load(name)
    node_types = config["available_node_types"]
    gpu_types = [t for t in node_types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types, f"{name}: no GPU node type"

    # Train asks for {CPU: run.cpus_per_worker, GPU: 1} per worker; Ray Data needs one more CPU
    # per read task. A full GPU node must hold one worker per GPU and still feed them.
    defaults = {f.name: f.default for f in fields(RunConfig)} | {
        f.name: f.default for f in fields(DataConfig)
    }
    for node_type in gpu_types:
        resources = node_type["resources"]
        need = resources["GPU"] * defaults["cpus_per_worker"] + defaults["num_cpus_per_read"]
        assert resources["CPU"] >= need, f"{name}: {machine_type(node_type)} CPUs for its GPUs"
    max_gpus = sum(t["resources"]["GPU"] * t.get("max_workers", 0) for t in gpu_types)
    assert max_gpus >= HEADLINE_NUM_GPU_WORKERS, f"{name}: scales to {max_gpus} GPUs"

    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("head") == 1, "the head is marked with the custom `head` resource"
    # the head's cloud role can start instances: no data task, trial or Train worker is scheduled there
    assert head["resources"].get("CPU") == 0, f"{name}: CPU tasks would run with the head's compute rights"
    assert sum(t.get("min_workers", 0) for t in node_types.values()) <= config["max_workers"]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_gpus_flag_only_on_gpu_nodes(name: str) -> None:
    config = load(name)
    assert not any("--gpus" in opt for opt in config["docker"].get("run_options", [])), (
        f"{name}: `--gpus all` in the global run_options breaks `docker run` on CPU nodes"
    )
    for type_name, node_type in config["available_node_types"].items():
        options = node_type.get("docker", {}).get("worker_run_options", [])
        has_gpus_flag = any("--gpus" in opt for opt in options)
        assert has_gpus_flag == (node_type["resources"].get("GPU", 0) > 0), f"{name}: {type_name}"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_node_installs_this_project(name: str) -> None:
    config = load(name)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert config["file_mounts"].get("~/learned-resizer") == "."
    installs = [c for c in config["setup_commands"] if re.search(r"pip install .*-e ", c)]
    assert installs, f"{name}: setup_commands do not `pip install -e` the project"
    extras = re.search(r"learned-resizer\[([\w,]+)\]", installs[0])
    assert project["name"] == "learned-resizer" and extras, installs[0]
    for extra in extras.group(1).split(","):
        assert extra in project["optional-dependencies"], f"{name}: no extra {extra!r}"
    # The quoted path must not start with "~": bash does not expand it inside quotes.
    assert "'~/" not in installs[0] and '"~/' not in installs[0]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_dashboard_stays_on_localhost(name: str) -> None:
    head_start = " ".join(load(name)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start



@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_token_authentication_is_on_for_every_node(name: str) -> None:
    """Without it anyone who reaches the head's ports submits jobs (runs code) on the cluster."""
    config = load(name)
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all(re.search(r"RAY_AUTH_MODE=token;?\s+ray start", c) for c in starts), (name, key)
