"""What a first `ray up cluster.yaml` needs, read from the file (no cloud, no Ray started).

The head keeps Ray's default instance profile (the autoscaler's role), every GPU node type declares
its GPUs and the qadist_* resource the configs steer work with, a CPU worker type exists, and every
node gets the same pinned Ray and torch. Ray's own schema check of the file after `prepare_config`
is tests/integration/test_configs.py.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())
NODE_TYPES: dict[str, dict] = CLUSTER["available_node_types"]
HEAD = CLUSTER["head_node_type"]
GPU_RESOURCE = {"label": "qadist_label", "train": "qadist_train"}  # one unit per GPU


def project_requirement(name: str) -> Requirement:
    """`name`'s requirement in pyproject.toml (Python 3.10: the installed qadist's metadata)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        deps = [d for d in metadata.requires("qadist") or [] if "extra ==" not in d]
    else:
        deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == name]
    return req


def node_image(node_type: str) -> str | None:
    """The container image a node type runs in (Ray's precedence), None without `docker:`."""
    docker = CLUSTER.get("docker") or {}
    if not docker:
        return None
    if node_type == HEAD:
        return docker.get("head_image") or docker.get("image")
    own = (NODE_TYPES[node_type].get("docker") or {}).get("worker_image")
    return own or docker.get("worker_image") or docker.get("image")


def node_setup(node_type: str) -> list[str]:
    """The setup commands a node type runs: a node type's own `worker_setup_commands` replace the
    global `setup_commands` + `worker_setup_commands` (as Ray's prepare_config merges them)."""
    if node_type == HEAD:
        return CLUSTER.get("setup_commands", []) + CLUSTER.get("head_setup_commands", [])
    if "worker_setup_commands" in NODE_TYPES[node_type]:
        return NODE_TYPES[node_type]["worker_setup_commands"]
    return CLUSTER.get("setup_commands", []) + CLUSTER.get("worker_setup_commands", [])


def pins(commands: list[str], package: str) -> set[str]:
    """Versions `package` is pinned to with `==` in pip commands (`ray[extras]==X` counts)."""
    return set(re.findall(rf"[\"' ]{package}(?:\[[^\]]*\])?==([0-9][^\"' ]*)", " ".join(commands)))


def ray_version_of(node_type: str) -> Version:
    """The one Ray version a node runs: the image tag's (rayproject/ray:X.Y.Z-...) and any `ray==` pin agree."""
    versions = pins(node_setup(node_type), "ray")
    image = node_image(node_type)
    if image:
        tag = re.fullmatch(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)(?:-.*)?", image)
        assert tag, f"{node_type}: image {image!r} is not a rayproject/ray image pinned by a release tag"
        versions.add(tag.group(1))
    assert len(versions) == 1, f"{node_type}: Ray pinned to {sorted(versions) or 'nothing'}: pin one release"
    return Version(versions.pop())


def test_the_head_keeps_the_autoscalers_instance_profile():
    """With `IamInstanceProfile` on the head, `ray up` neither creates nor attaches ray-autoscaler-v1,
    and a profile without EC2 launch rights means no worker ever starts. Workers that run with their own
    profile need iam:PassRole on its role, which the docs must tell the operator to grant."""
    assert "IamInstanceProfile" not in NODE_TYPES[HEAD]["node_config"]
    assert "IamInstanceProfile" not in CLUSTER.get("head_node", {})
    docs = (REPO / "docs" / "operations.md").read_text()
    for name, spec in NODE_TYPES.items():
        profile = spec["node_config"].get("IamInstanceProfile")
        if profile and name != HEAD:
            assert "iam:PassRole" in docs and profile.get("Name", profile.get("Arn", "")) in docs, (
                f"{name} runs with {profile}: docs/operations.md must say to grant iam:PassRole on it"
            )


@pytest.mark.parametrize("name", [n for n, t in NODE_TYPES.items() if t["resources"].get("GPU")])
def test_every_gpu_node_type_declares_its_qadist_resource_per_gpu(name):
    resources = NODE_TYPES[name]["resources"]
    declared = {k: v for k, v in resources.items() if k.startswith("qadist_")}
    assert len(declared) == 1 and set(declared) <= set(GPU_RESOURCE.values()), (
        f"{name}: declare one of {sorted(GPU_RESOURCE.values())}, not {declared}"
    )
    assert list(declared.values()) == [resources["GPU"]], f"{name}: one {list(declared)[0]} per GPU"
    assert name != HEAD


def test_there_is_a_label_a_train_and_a_cpu_worker_type():
    declared = {k for t in NODE_TYPES.values() for k in t["resources"] if k.startswith("qadist_")}
    assert set(GPU_RESOURCE.values()) | {"qadist_cpu"} <= declared
    cpu_types = [n for n, t in NODE_TYPES.items() if n != HEAD and not t["resources"].get("GPU")]
    assert cpu_types, "no CPU-only worker type"
    for name in cpu_types:
        resources = NODE_TYPES[name]["resources"]
        assert resources.get("qadist_cpu", 0) > 0 and NODE_TYPES[name].get("max_workers", 0) > 0, name
        assert "qadist_label" not in resources and "qadist_train" not in resources, name


@pytest.mark.parametrize("name", list(NODE_TYPES))
def test_every_node_pins_ray_and_torch(name):
    ray_version = ray_version_of(name)
    floor = project_requirement("ray")
    assert ray_version in floor.specifier, f"{name}: Ray {ray_version} is outside pyproject's {floor}"
    installed = Version(metadata.version("ray"))
    assert ray_version.major == installed.major, f"{name}: Ray {ray_version} on the cluster, {installed} here"
    torch_pins = pins(node_setup(name), "torch")
    assert len(torch_pins) == 1, f"{name}: torch pinned to {sorted(torch_pins) or 'nothing'}: pin one version"
    torch_version = Version(torch_pins.pop())
    assert torch_version in project_requirement("torch").specifier, f"{name}: torch {torch_version}"


def test_every_node_runs_the_same_environment():
    """Pickled models and batches cross nodes: one image and one set of setup commands everywhere."""
    assert len({node_image(n) for n in NODE_TYPES}) == 1
    assert len({tuple(node_setup(n)) for n in NODE_TYPES}) == 1


def test_cluster_yaml_as_written_passes_rays_schema():
    """The file itself, before Ray fills in its defaults (an unknown key fails here)."""
    jsonschema = pytest.importorskip("jsonschema")
    import ray

    schema = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema.exists():
        pytest.skip(f"this ray ({ray.__version__}) ships no autoscaler schema")
    jsonschema.validate(CLUSTER, json.loads(schema.read_text()))
