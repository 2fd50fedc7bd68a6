"""Offline checks of the cluster launcher files in clusters/ (no cluster is started).

Each file must pass Ray's own preparation and validation (what `ray up` runs first and what Ray's
autoscaler tests use), broken copies must be rejected, no credentials may appear, the container
image must be pinned to the Ray this project depends on, the head must advertise no GPUs while the
workers bring GPUs, and token authentication must stay on.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from click.exceptions import ClickException
from packaging.version import Version
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted((REPO / "clusters").glob("*.yaml"))
IDS = [path.name for path in CLUSTER_FILES]
# rayproject/ray:{version}-py{XY}-{gpu|cuXYZ}: a release image with a CUDA build.
IMAGE_TAG = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py(?P<py>\d{2,3})-(?:gpu|cu\d+)$")


def load(path: Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def prepared(config: dict) -> dict:
    """What `ray up` does before anything else: fill defaults, then validate against the schema."""
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def start_commands(config: dict, role: str) -> str:
    return "\n".join(config[f"{role}_start_ray_commands"])


@pytest.fixture(params=CLUSTER_FILES, ids=IDS)
def cluster_file(request) -> Path:
    return request.param


def test_both_cluster_files_exist():
    assert {"gpu.yaml", "local.yaml"} <= set(IDS)


def test_ray_prepares_and_validates(cluster_file):
    config = prepared(load(cluster_file))
    assert config["head_node_type"] in config["available_node_types"]


# Each breakage: (what, how to break a loaded config, exceptions Ray raises for it).
SCHEMA_ERRORS = (jsonschema.ValidationError,)


def misspell_top_level_key(config):
    config["setup_comands"] = config.pop("setup_commands")


def wrong_type(config):
    config["idle_timeout_minutes"] = "ten"


def command_not_a_string(config):
    # What an unquoted `echo "a: b"` turns into: YAML reads it as a mapping.
    config["setup_commands"].append({"echo WARNING": "missing"})


def missing_required_field(config):
    if config["provider"]["type"] == "local":
        del config["provider"]["head_ip"]  # local provider: head_ip + worker_ips are required
    else:
        worker_type = next(name for name in config["available_node_types"] if name != config["head_node_type"])
        del config["available_node_types"][worker_type]["resources"]  # schema: node types need resources


def broken_node_layout(config):
    if config["provider"]["type"] == "local":
        config["provider"]["worker_ips"] = "192.0.2.11"  # wrong type: a string, not a list
    else:
        config["head_node_type"] = "no_such_type"


BREAKAGES = [
    (misspell_top_level_key, SCHEMA_ERRORS),
    (wrong_type, SCHEMA_ERRORS),
    (command_not_a_string, SCHEMA_ERRORS),
    (missing_required_field, SCHEMA_ERRORS + (ClickException,)),
    (broken_node_layout, SCHEMA_ERRORS + (ValueError,)),
]


@pytest.mark.parametrize("break_it, errors", BREAKAGES, ids=[b.__name__ for b, _ in BREAKAGES])
def test_broken_copy_is_rejected(cluster_file, break_it, errors):
    config = load(cluster_file)
    prepared(config)  # the intact file passes ...
    break_it(config)
    with pytest.raises(errors):  # ... and the broken copy does not
        prepared(config)


# Credentials in any form: AWS keys, passwords, private key material, an inlined Ray token.
SECRET_PATTERNS = [
    r"aws_access_key",
    r"aws_secret",
    r"aws_session_token",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"(?i)password|passwd",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"RAY_AUTH_TOKEN\s*=",
    r"(?i)(secret|token|api_key)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{16,}",
]


@pytest.mark.parametrize("pattern", SECRET_PATTERNS)
def test_no_credentials_in_text(cluster_file, pattern):
    text = cluster_file.read_text()
    assert not re.search(pattern, text), f"{cluster_file.name}: matches credential pattern {pattern!r}"


def test_ssh_key_is_a_path_not_key_material(cluster_file):
    auth = load(cluster_file).get("auth", {})
    for key in ("ssh_private_key", "ssh_public_key"):
        if key in auth:
            assert auth[key].startswith(("~/", "/")), f"{cluster_file.name}: auth.{key} must be a file path"


def test_image_pinned_to_installed_and_pyproject_ray(cluster_file):
    image = load(cluster_file)["docker"]["image"]
    match = IMAGE_TAG.match(image)
    assert match, f"{cluster_file.name}: docker.image {image!r} is not a rayproject/ray GPU release tag"
    assert match["version"] == ray.__version__

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(dep for dep in dependencies if re.match(r"ray(\[|\s|>|=)", dep))
    pinned = re.search(r">=\s*([\d.]+)", ray_pin)
    assert pinned, f"pyproject.toml: ray dependency {ray_pin!r} has no >= pin"
    assert Version(pinned.group(1)) == Version(match["version"])


def test_setup_installs_project_next_to_the_pinned_ray(cluster_file):
    config = load(cluster_file)
    project_mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    setup = "\n".join(config["setup_commands"])
    assert f"cd {project_mount} && pip install" in setup and " -e . " in setup
    assert f"ray[default,tune,train]=={ray.__version__}" in setup


def test_head_alone_holds_the_trial_driver_resource(cluster_file):
    """Trial drivers ask for a share of DRIVER_NODE_RESOURCE (search/tuning/plan.py): only the head may declare it, so a
    lost GPU node takes workers (which Train retries elsewhere) but never a trial's driver (which Tune would not)."""
    from search.tuning.plan import DRIVER_NODE_RESOURCE

    config = load(cluster_file)
    if config["provider"]["type"] == "local":
        assert f'"{DRIVER_NODE_RESOURCE}"' in start_commands(config, "head")
        assert DRIVER_NODE_RESOURCE not in start_commands(config, "worker")
    else:
        head = config["available_node_types"][config["head_node_type"]]
        assert head["resources"].get(DRIVER_NODE_RESOURCE, 0) > 0
        for name, node_type in config["available_node_types"].items():
            if name != config["head_node_type"]:
                assert DRIVER_NODE_RESOURCE not in node_type.get("resources", {})


def test_head_advertises_no_gpus(cluster_file):
    config = prepared(load(cluster_file))
    head = config["available_node_types"][config["head_node_type"]]
    if config["provider"]["type"] == "local":
        # One node type for all machines: the head hides its GPUs on the command line.
        assert "--num-gpus=0" in start_commands(config, "head")
    else:
        assert head["resources"]["GPU"] == 0
        assert head["resources"]["CPU"] > 0
        assert head["max_workers"] == 0


def test_workers_bring_gpus(cluster_file):
    config = prepared(load(cluster_file))
    assert "--num-gpus=0" not in start_commands(config, "worker")
    assert "--gpus all" in config["docker"]["worker_run_options"]
    assert "--gpus all" not in config["docker"].get("run_options", [])  # would break a GPU-less head
    if config["provider"]["type"] == "local":
        assert config["provider"]["worker_ips"], "local.yaml: no worker_ips"
        return  # the local provider auto-detects each worker's GPUs
    workers = {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    assert workers
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, f"worker type {name} declares no GPUs"
    # At least one type can actually launch, and one node holds several GPUs (multi-GPU nodes).
    launchable = [t for t in workers.values() if t["max_workers"] >= 1]
    assert launchable and max(t["resources"]["GPU"] for t in launchable) >= 2


def test_token_auth_stays_on(cluster_file):
    config = load(cluster_file)
    for role in ("head", "worker"):
        ray_start = [c for c in config[f"{role}_start_ray_commands"] if "ray start" in c]
        assert ray_start and all("RAY_AUTH_MODE=token" in c for c in ray_start), role
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    # Every node gets the user's token file (the value itself never appears in the file).
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "RAY_AUTH_MODE=disabled" not in cluster_file.read_text()


def test_dashboard_not_opened_to_the_world(cluster_file):
    config = load(cluster_file)
    extra_rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in extra_rules:  # only SSH may be opened beyond Ray's intra-cluster defaults
        assert rule.get("FromPort") == 22 and rule.get("ToPort") == 22, rule
    assert "8265" not in " ".join(config["docker"].get("run_options", []))  # no -p 8265 publish


def test_storage_and_data_places(cluster_file):
    config = load(cluster_file)
    text = cluster_file.read_text()
    assert "/data:/data" in " ".join(config["docker"]["run_options"])
    if config["provider"]["type"] == "aws":
        assert "aws s3 sync" in "\n".join(config["setup_commands"])
        assert config["provider"]["cache_stopped_nodes"] is False
    else:
        assert "-v /mnt/shared:/mnt/shared" in config["docker"]["run_options"]
        assert "/data/C-NMC_Leukemia" in text
