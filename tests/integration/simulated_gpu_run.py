"""Run by test_simulated_gpu_cluster.py in its own process: a simulated GPU cluster on this machine.

`ray.cluster_utils.Cluster` raylets on 127.0.0.1 shaped like cluster.yaml: a CPU head (where the
driver runs, as under `ray job submit`), a `label_gpu` node (1 GPU, `qadist_label: 1`) and a
`train_gpu` node (2 GPUs, `qadist_train: 2`). The GPUs are declared, not real: qadist's test hook
(QADIST_SIMULATED_GPUS=1, qadist/runtime.py) lets the work Ray gives a GPU compute on the CPU. The
driver holds no GPU, so the hook does nothing there: if it asked for a CUDA device, it would fail.
Prints one JSON line: what ran on which node type, from Ray's state API.

    python simulated_gpu_run.py CONFIG.yaml
runs the pipeline of CONFIG.yaml (placement reported), then its distill section again with 8 GPU
workers into a new folder, which the 2 "GPUs" of train_gpu can never hold (exit 2 expected, timed).
"""

from __future__ import annotations

import json
import os
import sys
import time

import yaml

# Every node, and the driver's view of "this node", on 127.0.0.1 (see multinode_run.py).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# The hook for every process of the cluster, the driver's too: it acts only where Ray gave a GPU.
os.environ.update({"QADIST_SIMULATED_GPUS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
NODE_TYPES = {
    "label_gpu": {"num_cpus": 2, "num_gpus": 1, "resources": {"qadist_label": 1}},
    "train_gpu": {"num_cpus": 2, "num_gpus": 2, "resources": {"qadist_train": 2}},
}


def start_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": True},
    )
    types = {cluster.head_node.node_id: "head"}
    for name, spec in NODE_TYPES.items():
        node = cluster.add_node(node_ip_address="127.0.0.1", **spec)
        types[node.node_id] = name
    cluster.wait_for_nodes()
    return cluster, types


def placement(types: dict[str, str]) -> dict[str, list[str]]:
    """Node type of every actor and task of this job that did GPU-side work, by Ray's state API."""
    from ray.util.state import list_actors, list_tasks

    seen: dict[str, list[str]] = {}
    for a in list_actors(detail=True, limit=10_000, raise_on_missing_output=False):
        name = a.class_name or ""
        for key in ("BlockTeacher", "Encoder", "StagedMatcher", "RayTrainWorker"):
            if key in name:
                seen.setdefault(key, []).append(types.get(a.node_id, a.node_id))
    deadline = time.monotonic() + 30  # task events reach the GCS a little after the task ends
    names: set[str] = set()
    while "answer" not in seen and time.monotonic() < deadline:
        for t in list_tasks(detail=True, limit=10_000, raise_on_missing_output=False):
            names.add(str(t.name))
            if (t.name or "").endswith("answer") and t.node_id:
                seen.setdefault("answer", []).append(types.get(t.node_id, t.node_id))
        time.sleep(1)
    if "answer" not in seen:
        seen["tasks seen"] = sorted(names)
    return seen


def main(config: str) -> int:
    import ray

    from qadist.cli import main as qadist_main

    cluster, types = start_cluster()
    os.environ["RAY_ADDRESS"] = cluster.address  # what `ray job submit` gives a job's driver
    report: dict = {}
    try:
        ray.init(address=cluster.address)
        started = time.monotonic()
        try:
            qadist_main(["pipeline", "--config", config])
        except SystemExit as e:
            if e.code:
                raise
        report["pipeline_s"] = round(time.monotonic() - started, 1)
        report["placement"] = placement(types)
        distill = yaml.safe_load(open(config))["distill"]
        too_large = {**distill, "out": distill["out"].replace("{generation}", "too-large"), "num_workers": 8}
        too_large.pop("continue_from", None)
        too_large["generation"] = 1
        path = os.path.join(os.path.dirname(config), "too-large.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"distill": too_large}, f)
        started = time.monotonic()
        try:
            qadist_main(["distill", "--config", path])
            report["too_large_exit"] = 0
        except SystemExit as e:
            report["too_large_exit"] = e.code
        report["too_large_s"] = round(time.monotonic() - started, 1)
        print("SIMULATED " + json.dumps(report), flush=True)
        return 0
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
