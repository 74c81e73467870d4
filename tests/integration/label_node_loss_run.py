"""Run by test_label_node_loss.py in its own process: `run_label` on a three-raylet
`ray.cluster_utils.Cluster` (every node and the GCS on 127.0.0.1), one worker node removed once
shards have started to appear, then (mode "replace") a fresh node added in its place.

Prints one line `NODELOSS {json}` with what happened; exits 0 when the run committed, 3 when it
raised (the error is in the JSON), 4 when it was still running at the deadline (it is then left to
the parent's process-group kill: the point is that the test never hangs).

Keeping a Cluster on loopback: Ray resolves "this node's IP" by routing towards the internet
(`node_ip_address_from_perspective`), which on a machine with a LAN address gives that address,
and `ray.init(_node_ip_address="127.0.0.1")` rewrites loopback to it too
(`resolve_ip_for_localhost`). Passing `node_ip_address="127.0.0.1"` to the head and to every
`add_node`, and connecting the driver by the head's GCS address without `_node_ip_address`, keeps
everything on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

LOOPBACK = "127.0.0.1"


def step(what: str, started: float) -> None:
    print(f"[{time.time() - started:6.1f}s] {what}", file=sys.stderr, flush=True)


def main(workdir: str, pairs: str, teacher: str, mode: str, deadline_s: str) -> None:
    # Ray reads this once, at import: "this node's IP" becomes 127.0.0.1 (the branch Ray uses on
    # laptops), so ray.init no longer rewrites the GCS address 127.0.0.1:port to the LAN address.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    from qadist.config import LabelConfig
    from qadist.label.stage import run_label

    started = time.time()
    step("starting the head", started)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK, "include_dashboard": False}
    )
    workers = [cluster.add_node(num_cpus=2, node_ip_address=LOOPBACK) for _ in range(2)]
    step("waiting for the nodes", started)
    cluster.wait_for_nodes()
    step("connecting the driver", started)
    ray.init(
        address=cluster.address, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}}
    )
    seen = {
        "gcs_address": cluster.address,
        "node_ips": sorted({n["NodeManagerAddress"] for n in ray.nodes()}),
        "nodes_before": len([n for n in ray.nodes() if n["Alive"]]),
    }
    step(f"connected: {seen}", started)
    out = Path(workdir, "labels")
    outcome: dict = {}

    def job() -> None:
        try:
            m = run_label(
                LabelConfig(
                    pairs=pairs,
                    out=str(out),
                    teachers=[teacher],
                    num_actors=2,
                    spread_actors=True,
                    rows_per_shard=20,
                    batch_size=16,
                    max_seq_len=256,
                    doc_stride=64,
                )
            )
            outcome["counts"] = m["counts"]
        except BaseException as e:  # noqa: BLE001 (reported to the parent)
            outcome["error"] = f"{type(e).__name__}: {e}"[-2000:]
            outcome["traceback"] = traceback.format_exc()[-4000:]

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    limit = started + float(deadline_s)
    # remove_node/add_node must run on the main thread (DESIGN.md): wait for the first shards here.
    while thread.is_alive() and len(list(out.glob("shards/*.parquet"))) < 2 and time.time() < limit:
        time.sleep(0.1)
    seen["shards_at_removal"] = len(list(out.glob("shards/*.parquet")))
    if thread.is_alive():
        step(f"removing a node ({seen['shards_at_removal']} shards written)", started)
        cluster.remove_node(workers[0], allow_graceful=False)
        step("removed", started)
        seen["removed_at_s"] = round(time.time() - started, 1)
        if mode == "replace":
            cluster.add_node(num_cpus=2, node_ip_address=LOOPBACK)
            seen["replaced_at_s"] = round(time.time() - started, 1)
    thread.join(max(0.0, limit - time.time()))
    step(f"run {'still going' if thread.is_alive() else 'ended'}", started)
    seen["seconds"] = round(time.time() - started, 1)
    seen["nodes_after"] = len([n for n in ray.nodes() if n["Alive"]])
    seen.update(outcome)
    print("NODELOSS " + json.dumps(seen), flush=True)
    code = 4 if thread.is_alive() else (3 if "error" in outcome else 0)
    if code != 4:
        ray.shutdown()
        cluster.shutdown()
    sys.stdout.flush()
    os._exit(code)  # a stuck pipeline thread must not keep the process alive


if __name__ == "__main__":
    main(*sys.argv[1:])
