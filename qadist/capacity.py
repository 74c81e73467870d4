"""Can the cluster ever supply what a stage asks for? Checked before any work starts.

Ray waits forever for a request nothing can satisfy (a TorchTrainer's placement group, an actor
pool, Serve replicas, a GPU task): a one-GPU machine given a cluster config's `num_workers: 8`
would hang with no message. Every stage that asks for GPUs or custom resources states its demand
here first and gets a one-line UserError (exit 2) naming the flag and the fix when it cannot fit.

What the cluster can have (`node_types`):
- an autoscaling cluster: its node types and their `max_workers`, read from what the autoscaler
  reported to the GCS (autoscaler v2, KubeRay) or from `~/ray_bootstrap_config.yaml`, the file
  `ray up` puts on the head node where a submitted job's driver runs (autoscaler v1);
- otherwise (embedded Ray, a fixed cluster, `ray.cluster_utils.Cluster` in tests): the nodes alive now.

The fit is first-fit-decreasing bin packing of every unit (one actor, worker, replica or task) onto
those nodes: an upper bound that catches the impossible (8 workers x 1 GPU on 1 GPU; a custom
resource no node type declares) without second-guessing Ray's scheduler on what is merely busy.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

from qadist.errors import UserError

log = logging.getLogger(__name__)

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
UNBOUNDED = 1 << 20  # a node type with no upper bound: more nodes than any request needs


@dataclass(frozen=True)
class Demand:
    """`count` units, each needing `bundle` (Ray resource name -> amount) on one node."""

    what: str  # "8 Train workers"
    bundle: dict[str, float]
    count: int
    fix: str  # "lower --num-workers (raise --grad-accum to keep the global batch)"


@dataclass
class NodeType:
    """`count` nodes (at most) with `resources` each."""

    name: str
    resources: dict[str, float]
    count: int
    free: list[dict[str, float]] = field(default_factory=list)


def bundle(cpus: float = 0, gpus: float = 0, custom: dict[str, float] | None = None) -> dict[str, float]:
    """A unit's resources without the zero entries (Ray's own spelling: CPU, GPU, custom names)."""
    wanted = {"CPU": cpus, "GPU": gpus, **(custom or {})}
    return {k: float(v) for k, v in wanted.items() if v}


def live_nodes(ray) -> list[NodeType]:
    """The nodes alive now, each with its total resources."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return [
        NodeType(n.get("NodeManagerAddress", "node") + ("" if i == 0 else f"#{i}"), dict(n.get("Resources", {})), 1)
        for i, n in enumerate(nodes)
    ]


def reported_node_types() -> list[NodeType] | None:
    """The node types an autoscaler reported to the GCS (autoscaler v2, KubeRay), or None."""
    try:
        import ray._private.state

        config = ray._private.state.state.get_cluster_config()
    except Exception as e:  # noqa: BLE001 (an older GCS or no connection: fall back to the other sources)
        log.debug("no autoscaler cluster config from the GCS: %s", e)
        return None
    if config is None or not config.node_group_configs:
        return None
    return [
        NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, UNBOUNDED if g.max_count < 0 else g.max_count)
        for g in config.node_group_configs
    ]


def bootstrap_node_types(path: str | None = None) -> list[NodeType] | None:
    """The node types of the `ray up` config on this (head) node, or None where there is none."""
    path = os.path.expanduser(path or BOOTSTRAP_CONFIG)
    if not os.path.isfile(path):
        return None
    import yaml

    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    return [
        NodeType(
            name,
            {k: float(v) for k, v in (spec.get("resources") or {}).items()},
            1 if name == head else int(spec.get("max_workers", config.get("max_workers", 0))),
        )
        for name, spec in types.items()
    ]


def node_types(ray) -> tuple[list[NodeType], str]:
    """What the cluster can have, and a phrase saying where that came from."""
    for source, types in (
        ("the autoscaler's node types", reported_node_types()),
        (f"the node types of {BOOTSTRAP_CONFIG}", bootstrap_node_types()),
    ):
        # A type that declares no resources (left for Ray to detect) cannot be reasoned about.
        if types and all(t.resources for t in types):
            return types, source
    nodes = live_nodes(ray)
    return nodes, f"the {len(nodes)} node(s) of this cluster, no autoscaler"


def _holds(resources: dict[str, float], unit: dict[str, float]) -> bool:
    return all(resources.get(k, 0) + 1e-9 >= v for k, v in unit.items())


def _resources(resources: dict[str, float]) -> str:
    """CPU, GPU and custom resources; Ray's bookkeeping ones (memory, node:<ip>, ...) left out."""
    internal = ("memory", "object_store_memory")
    shown = {
        k: v for k, v in resources.items() if k not in internal and not k.startswith(("node:", "accelerator_type:"))
    }
    return ", ".join(f"{v:g} {k}" for k, v in shown.items())


def _place(unit: dict[str, float], types: list[NodeType]) -> bool:
    """Put one unit on the first node with room, opening a new node of a type while it has any left."""
    for t in types:
        for free in t.free:
            if _holds(free, unit):
                for k, v in unit.items():
                    free[k] -= v
                return True
        if len(t.free) < t.count and _holds(t.resources, unit):
            t.free.append({k: t.resources.get(k, 0) - unit.get(k, 0) for k in t.resources})
            return True
    return False


def shortfall(demands: list[Demand], types: list[NodeType]) -> Demand | None:
    """The first demand whose units do not all fit beside the others' (largest units first), or None."""
    for t in types:
        t.free = []
    units = sorted(
        ((d, d.bundle) for d in demands for _ in range(d.count)),
        key=lambda item: (-item[1].get("GPU", 0), -sum(item[1].values())),
    )
    for demand, unit in units:
        if not _place(unit, types):
            return demand
    return None


def total(types: list[NodeType], name: str) -> float:
    """The most of resource `name` the node types can hold together (inf for an unbounded type)."""
    return sum(
        (math.inf if t.count >= UNBOUNDED else t.count) * t.resources.get(name, 0) for t in types if name in t.resources
    )


def describe(demand: Demand) -> str:
    return f"{demand.what} x ({_resources(demand.bundle)})"


def check_capacity(ray, stage: str, demands: list[Demand]) -> None:
    """Raise a one-line UserError when `demands` (all at once) can never be placed on the cluster."""
    demands = [d for d in demands if d.count > 0 and d.bundle]
    if not demands:
        return
    types, source = node_types(ray)
    failed = shortfall(demands, types)
    if failed is None:
        return
    lacking = next((k for k in failed.bundle if not any(k in t.resources for t in types)), None)
    if lacking is not None:
        have = f"no node has a {lacking!r} resource"
    elif not any(_holds(t.resources, failed.bundle) for t in types):
        have = "no node is that large (" + ", ".join(f"{t.name}: {_resources(t.resources)}" for t in types) + ")"
    else:
        names = sorted({k for d in demands for k in d.bundle}, key=lambda k: (k != "GPU", k))
        have = "it can have " + ", ".join(f"{total(types, k):g} {k}" for k in names if k in ("GPU", *failed.bundle))
    raise UserError(f"{stage}: {describe(failed)} can never be placed: {have} ({source}); {failed.fix}")
