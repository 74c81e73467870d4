"""The cluster config passes Ray's own autoscaler schema; every job config validates.

A job config is either sectioned (one mapping per stage: `label:`, `distill:`, ...) or flat, in
which case its file name starts with the stage it configures (`label-albert-xxlarge.yaml`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qadist.config import load_config
from qadist.stages import STAGE_CONFIGS

REPO = Path(__file__).resolve().parents[2]
JOB_CONFIGS = sorted((REPO / "jobs" / "configs").rglob("*.yaml"))


def test_cluster_yaml_passes_rays_autoscaler_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))
    assert raw["head_node_type"] in raw["available_node_types"]
    gpu_types = [t for t in raw["available_node_types"].values() if t["resources"].get("GPU")]
    assert len(gpu_types) >= 2, "one GPU worker type for labelling and one for training"
    assert "aws_access_key" not in (REPO / "cluster.yaml").read_text().lower()


def test_there_are_job_configs():
    assert JOB_CONFIGS, "jobs/configs/ holds no YAML"
    assert (REPO / "jobs" / "configs" / "local.yaml") in JOB_CONFIGS


def serve_deploy_files() -> list[Path]:
    return [p for p in JOB_CONFIGS if "applications" in (yaml.safe_load(p.read_text()) or {})]


def stages_of(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text()) or {}
    sections = [s for s in STAGE_CONFIGS if isinstance(data.get(s), dict)]
    if sections:
        return sections
    stage = path.stem.split("-")[0]
    assert stage in STAGE_CONFIGS, f"{path}: flat config must be named <stage>-*.yaml (stage in {list(STAGE_CONFIGS)})"
    return [stage]


@pytest.mark.parametrize(
    "path", [p for p in JOB_CONFIGS if p not in serve_deploy_files()], ids=lambda p: str(p.relative_to(REPO))
)
def test_job_config_validates(path):
    """As the pipeline reads it: a section's `{generation}` placeholders filled (here with 1, as before
    the first label generation) and a distill `continue_from` taken out."""
    from qadist.pipeline import resolve_section

    data = yaml.safe_load(path.read_text()) or {}
    for stage in stages_of(path):
        if isinstance(data.get(stage), dict):
            section = resolve_section(stage, data[stage], 1, look=False)
            load_config(STAGE_CONFIGS[stage], stage, overrides=section, source=str(path))
        else:
            load_config(STAGE_CONFIGS[stage], stage, str(path))


def test_the_serve_deploy_file_passes_serves_schema_and_its_args_validate():
    """`serve deploy` reads it: Ray Serve's own schema, and each app's args as `qadist serve` keys."""
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from qadist.answer.serve import app_builder

    (path,) = serve_deploy_files()
    schema = ServeDeploySchema(**yaml.safe_load(path.read_text()))
    for app in schema.applications:
        assert app.import_path == "qadist.answer.serve:app_builder"
        assert isinstance(app_builder(app.args), Application)  # builds (binds) without starting anything
