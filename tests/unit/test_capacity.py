"""The resource arithmetic of qadist.capacity: what can never be placed is an error before any work;
what an autoscaler can add is not. Pure functions, plus the job configs against cluster.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qadist.capacity import Demand, NodeType, bootstrap_node_types, bundle, check_capacity, shortfall
from qadist.config import load_config
from qadist.errors import UserError
from qadist.stages import STAGE_CONFIGS

REPO = Path(__file__).resolve().parents[2]


def one_gpu_machine() -> list[NodeType]:
    return [NodeType("workstation", {"CPU": 16, "GPU": 1}, 1)]


def workers(n: int, each: dict[str, float]) -> Demand:
    return Demand(f"{n} Train worker(s)", each, n, "lower --num-workers")


class FakeRay:
    """`ray.nodes()` of a fixed cluster (no autoscaler: the GCS and bootstrap sources are patched away)."""

    def __init__(self, nodes: list[dict[str, float]]):
        self._nodes = [
            {"Alive": True, "NodeManagerAddress": f"10.0.0.{i}", "Resources": r} for i, r in enumerate(nodes)
        ]

    def nodes(self) -> list[dict]:
        return self._nodes


@pytest.fixture
def no_autoscaler(monkeypatch):
    monkeypatch.setattr("qadist.capacity.reported_node_types", lambda: None)
    monkeypatch.setattr("qadist.capacity.bootstrap_node_types", lambda path=None: None)


def test_eight_gpu_workers_never_fit_one_gpu_but_one_with_accumulation_does():
    assert shortfall([workers(8, {"GPU": 1})], one_gpu_machine()) is not None
    assert shortfall([workers(1, {"GPU": 1})], one_gpu_machine()) is None


def test_the_pool_is_counted_whole_not_one_actor():
    # The old label check compared one actor's GPUs with the cluster's: 2 x 1 GPU "fit" a 1-GPU machine.
    actors = Demand("2 teacher actor(s)", bundle(1, 1), 2, "lower --num-actors")
    assert shortfall([actors], one_gpu_machine()) is actors
    halves = Demand("2 teacher actor(s)", bundle(1, 0.5), 2, "lower --num-actors")
    assert shortfall([halves], one_gpu_machine()) is None, "fractions share a GPU"


def test_units_pack_per_node_not_by_cluster_totals():
    # 2 nodes x 1 GPU hold 2 GPUs in total, but no node holds a 2-GPU worker.
    nodes = [NodeType("g", {"CPU": 8, "GPU": 1}, 2)]
    assert shortfall([workers(1, {"GPU": 2})], nodes) is not None
    assert shortfall([workers(2, {"GPU": 1})], nodes) is None


def test_a_custom_resource_steers_and_limits():
    types = [
        NodeType("head", {"CPU": 8}, 1),
        NodeType("label_gpu", {"CPU": 8, "GPU": 1, "qadist_label": 1}, 8),
        NodeType("train_gpu", {"CPU": 48, "GPU": 4, "qadist_train": 4}, 2),
    ]
    assert shortfall([workers(8, {"GPU": 1, "qadist_train": 1})], types) is None
    assert shortfall([workers(9, {"GPU": 1, "qadist_train": 1})], types) is not None, "only 8 train GPUs"
    # Without the custom resource 16 GPU workers fit (label and train nodes alike).
    assert shortfall([workers(16, {"GPU": 1})], types) is None


def test_message_names_the_stage_the_request_the_cluster_and_the_fix(no_autoscaler):
    ray = FakeRay([{"CPU": 16, "GPU": 1, "memory": 1e10, "node:10.0.0.0": 1}])
    with pytest.raises(UserError) as e:
        check_capacity(ray, "distill", [workers(8, {"GPU": 1})])
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith("distill: 8 Train worker(s) x (1 GPU) can never be placed: it can have 1 GPU")
    assert "no autoscaler" in line and line.endswith("lower --num-workers")
    with pytest.raises(UserError, match="no node has a 'qadist_train' resource"):
        check_capacity(ray, "distill", [workers(1, {"GPU": 1, "qadist_train": 1})])
    with pytest.raises(UserError, match=r"no node is that large \(10\.0\.0\.0: 16 CPU, 1 GPU\)"):
        check_capacity(ray, "serve", [workers(1, {"GPU": 2})])
    check_capacity(ray, "distill", [workers(1, {"GPU": 1})])  # fits: no error


def test_an_autoscaling_cluster_counts_the_nodes_it_can_add(tmp_path, monkeypatch):
    """The `ray up` config on the head: GPU nodes that do not exist yet still count (no false alarm
    on a cluster that scales from zero), up to their max_workers."""
    monkeypatch.setattr("qadist.capacity.reported_node_types", lambda: None)
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr("qadist.capacity.BOOTSTRAP_CONFIG", str(path))
    head_only = FakeRay([{"CPU": 8}])  # no GPU node started yet
    train = config["available_node_types"]["train_gpu"]
    most = int(train["max_workers"]) * int(train["resources"]["GPU"])
    check_capacity(head_only, "distill", [workers(most, {"GPU": 1, "qadist_train": 1})])
    with pytest.raises(UserError, match="the node types of"):
        check_capacity(head_only, "distill", [workers(most + 1, {"GPU": 1, "qadist_train": 1})])


def stage_demands(stage: str, cfg) -> list[Demand]:
    import importlib

    module = {"pairs": "pairs.stage", "label": "label.stage", "predict": "answer.predict", "serve": "answer.serve"}
    module |= {s: "train.launch" for s in ("distill", "finetune", "pretrain")}
    return importlib.import_module(f"qadist.{module[stage]}").demands(cfg) if stage in module else []


def config_demands(path: Path) -> dict[str, list[Demand]]:
    from qadist.pipeline import resolve_section

    data = yaml.safe_load(path.read_text())
    out = {}
    for stage, section in data.items():
        if stage in STAGE_CONFIGS and isinstance(section, dict):
            cfg = load_config(STAGE_CONFIGS[stage], stage, overrides=resolve_section(stage, section, 1, look=False))
            out[stage] = stage_demands(stage, cfg)
    return out


@pytest.mark.parametrize("name", ["daily.yaml", "distill-then-finetune.yaml", "self-distill-albert-xxlarge.yaml"])
def test_cluster_job_configs_fit_cluster_yaml_and_not_one_gpu(name):
    types = bootstrap_node_types(str(REPO / "cluster.yaml"))
    demands = config_demands(REPO / "jobs" / "configs" / name)
    for stage, wanted in demands.items():
        assert shortfall(wanted, types) is None, f"{name} {stage} does not fit cluster.yaml"
    assert any(shortfall(d, one_gpu_machine()) for d in demands.values() if d), f"{name} is a cluster config"


def test_the_one_gpu_config_fits_one_gpu():
    demands = config_demands(REPO / "jobs" / "configs" / "one-gpu.yaml")
    assert {"pairs", "label", "distill", "finetune", "predict"} <= set(demands)
    for stage, wanted in demands.items():
        assert shortfall(wanted, one_gpu_machine()) is None, f"one-gpu.yaml {stage} does not fit one GPU"
    distill = load_config(STAGE_CONFIGS["distill"], "distill", overrides=yaml.safe_load(
        (REPO / "jobs" / "configs" / "one-gpu.yaml").read_text())["distill"])  # fmt: skip
    assert distill.batch_size * distill.grad_accum == 256, "the cluster config's global batch (8 x 32)"


def test_every_stage_that_asks_for_gpus_states_its_demand():
    """pairs, label, distill/finetune/pretrain, serve and predict each refuse GPUs a CPU machine lacks."""
    cpu_machine = [NodeType("laptop", {"CPU": 8}, 1)]
    asks = {
        "pairs": {"questions": "q", "documents": "d", "out": "o", "num_gpus_per_actor": 1},
        "label": {"pairs": "p", "out": "o", "teachers": ["t"], "num_gpus_per_actor": 1},
        "distill": {"labels": "l", "student": "s", "out": "o", "use_gpu": True},
        "finetune": {"train_file": "f", "model": "m", "out": "o", "use_gpu": True},
        "pretrain": {"documents": "d", "model": "m", "out": "o", "use_gpu": True},
        "serve": {"model": "m", "num_gpus_per_replica": 0.5, "replicas": 3},
        "predict": {"model": "m", "data": "d", "out": "p.json", "use_gpu": True},
    }
    for stage, values in asks.items():
        wanted = stage_demands(stage, load_config(STAGE_CONFIGS[stage], stage, overrides=values))
        assert wanted and shortfall(wanted, cpu_machine) is not None, stage
        without = {
            k: v for k, v in values.items() if k not in ("num_gpus_per_actor", "use_gpu", "num_gpus_per_replica")
        }
        assert shortfall(stage_demands(stage, load_config(STAGE_CONFIGS[stage], stage, overrides=without)),
                         cpu_machine) is None, f"{stage} on the CPU fits"  # fmt: skip
    serve = load_config(STAGE_CONFIGS["serve"], "serve", overrides=asks["serve"])
    assert shortfall(stage_demands("serve", serve), one_gpu_machine()) is not None, "3 x 0.5 GPU > 1 GPU"
