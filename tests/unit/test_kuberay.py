"""deploy/kuberay: the RayJob and RayService manifests pass the KubeRay CRDs' OpenAPI v3 schemas
(vendored in deploy/kuberay/crds/, unknown fields refused as `kubectl apply --validate=strict`
would) and keep cluster.yaml's resources, image and pins."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "deploy" / "kuberay"
MANIFESTS = {"rayjob-daily.yaml": "ray.io_rayjobs.yaml", "rayservice.yaml": "ray.io_rayservices.yaml"}
GPU_RESOURCES = {"qadist_label", "qadist_train"}


def strict(schema):
    """The schema with unknown fields refused wherever it lists the known ones."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if k != "properties"}
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@cache
def crd_validator(crd: str, version: str):
    """A validator of the CRD's schema for `version` (built once: checking a 1 MB schema takes seconds)."""
    jsonschema = pytest.importorskip("jsonschema")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load((KUBERAY / "crds" / crd).read_text(), Loader=loader)["spec"]
    (served,) = [v for v in spec["versions"] if v["name"] == version and v["served"]]
    return jsonschema.Draft7Validator(strict(served["schema"]["openAPIV3Schema"]))


def manifest(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_manifest_passes_the_kuberay_crd_schema(name):
    doc = manifest(name)
    group, version = doc["apiVersion"].split("/")
    assert group == "ray.io"
    crd_validator(MANIFESTS[name], version).validate(doc)


def test_the_strict_schema_refuses_a_misspelt_field():
    jsonschema = pytest.importorskip("jsonschema")
    doc = manifest("rayjob-daily.yaml")
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        crd_validator("ray.io_rayjobs.yaml", "v1").validate(doc)


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_every_group_declares_its_qadist_resource_per_gpu_or_cpu(name):
    for group in cluster_spec(manifest(name))["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        declared = {k: float(v) for k, v in group.get("resources", {}).items() if k.startswith("qadist_")}
        gpus = float(limits.get("nvidia.com/gpu", 0))
        if gpus:
            assert len(declared) == 1 and set(declared) <= GPU_RESOURCES, group["groupName"]
            assert list(declared.values()) == [gpus], f"{group['groupName']}: one unit per GPU"
        else:
            assert declared == {"qadist_cpu": float(limits["cpu"])}, f"{group['groupName']}: one qadist_cpu per CPU"


def test_the_daily_job_runs_the_daily_config_with_the_label_and_train_groups():
    doc = manifest("rayjob-daily.yaml")
    config = re.search(r"--config (\S+)", doc["spec"]["entrypoint"]).group(1)
    assert config == "jobs/configs/daily.yaml" and (REPO / config).exists()
    declared = {k for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"] for k in g.get("resources", {})}
    assert declared == GPU_RESOURCES | {"qadist_cpu"}


def test_the_rayservice_serves_the_serve_deploy_application():
    served = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    deploy = yaml.safe_load((REPO / "jobs" / "configs" / "serve-deploy.yaml").read_text())
    assert served["applications"] == deploy["applications"]


def test_the_image_has_cluster_yamls_environment():
    """The Dockerfile's base image and pins are cluster.yaml's; every pod runs an image of that
    Dockerfile, and the manifests name cluster.yaml's Ray version."""
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert f"FROM {cluster['docker']['image']}\n" in dockerfile
    run = [line.removeprefix("RUN ").strip() for line in dockerfile.splitlines() if line.startswith("RUN ")]
    assert run == [c.replace("~/qadist", "/home/ray/qadist") for c in cluster["setup_commands"]]
    ray_version = cluster["docker"]["image"].split(":")[1].split("-")[0]
    for name in MANIFESTS:
        spec = cluster_spec(manifest(name))
        assert spec["rayVersion"] == ray_version, name
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
        assert len(images) == 1, f"{name}: one image for every pod, not {images}"
