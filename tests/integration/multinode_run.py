"""Run by test_multinode.py in its own process: three raylets on this machine
(`ray.cluster_utils.Cluster`, 127.0.0.1), the label stage with one teacher actor per node, then a
two-worker distill with one worker per node. Prints one JSON line with what ran where.
"""

from __future__ import annotations

import json
import os
import sys

# Keep every node, and the driver's view of "this node", on 127.0.0.1: by default Ray maps a
# loopback address to the machine's routable IP (services.resolve_ip_for_localhost), where the
# loopback-bound GCS is not listening. This switch makes get_node_ip_address() loopback.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def main(workdir: str, pairs: str, teacher_a: str, teacher_b: str, student: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from qadist.config import DistillConfig, LabelConfig
    from qadist.label.stage import run_label
    from qadist.shards import read_manifest
    from qadist.train.stage import run_distill

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    )
    for _ in range(2):
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(
        address=cluster.address, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}}
    )
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    try:
        windows = {"max_seq_len": 128, "doc_stride": 32}
        run_label(
            LabelConfig(
                pairs=pairs,
                out=f"{workdir}/labels",
                teachers=[teacher_a, teacher_b],
                num_actors=3,
                spread_actors=True,
                rows_per_shard=10,
                batch_size=16,
                **windows,
            )
        )
        manifest = read_manifest(f"{workdir}/labels")
        result = run_distill(
            DistillConfig(
                labels=f"{workdir}/labels",
                student=student,
                out=f"{workdir}/student",
                num_workers=2,
                placement_strategy="STRICT_SPREAD",
                epochs=1,
                batch_size=8,
                checkpoint_every=1000,
                **windows,
            )
        )
        print(
            "MULTINODE "
            + json.dumps(
                {
                    "nodes": nodes,
                    "label_shard_nodes": [s.get("node_id") for s in manifest["shards"]],
                    "counts": manifest["counts"],
                    "train_worker_nodes": result["metrics"]["workers/node_ids"].split(","),
                    "final": result["final"],
                }
            ),
            flush=True,
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
