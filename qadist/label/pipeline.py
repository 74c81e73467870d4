"""The label stage's Ray work: the pre-pass over the ids, and the streaming Ray Data pipeline.

The pre-pass (Ray tasks, 16 bytes a row back to the driver) marks duplicate ids across the whole
input and against earlier generations. The pipeline runs one row per block through the stages of
`qadist.label.stages`: read + validate + window (CPU tasks) -> the teacher ensemble
(`ActorPoolStrategy` actors) -> write the shard (CPU tasks), within an object-store budget of a few
blocks per actor, so memory stays flat as the corpus grows.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from qadist.config import LabelConfig
from qadist.errors import UserError
from qadist.label.blocks import Block, find_duplicates, scan_block
from qadist.label.stages import BlockTeacher, window_blocks, write_shards

log = logging.getLogger(__name__)

BLOCK_BYTES_PER_TOKEN = 24  # packed windows + logits per max_seq_len token of a row, with room to spare
MIN_OBJECT_STORE_BUDGET = 32 << 20
WINDOW_WORKER_BYTES = 512 << 20  # a worker with the tokenizer loaded (measured ~320 MiB)
WINDOW_BYTES_PER_ROW = 16 << 10  # a pair's raw row plus its windows, generously


def pre_pass(
    ray, blocks: list[Block], max_context_chars: int, labelled: np.ndarray | list[np.ndarray] | None = None
) -> bool:
    """Scan every block (Ray tasks, bounded in flight): marks duplicate ids, within the input and of
    pairs an earlier generation labelled (`labelled`: their id hashes, `labelled_id_parts`); True when
    any pair has answers."""
    task = ray.remote(num_cpus=1)(scan_block)
    window = max(2, int(ray.cluster_resources().get("CPU", 2)) * 2)
    scans: list[dict | None] = [None] * len(blocks)
    pending: dict[Any, int] = {}
    for i, block in enumerate(blocks + [None] * window):
        if block is not None:
            pending[task.remote(block.to_json(), max_context_chars)] = i
        if len(pending) >= window or (block is None and pending):
            ready, _ = ray.wait(list(pending), num_returns=1)
            scans[pending.pop(ready[0])] = ray.get(ready[0])
    if not sum(s["rows_in"] for s in scans):
        raise UserError("no pairs found in the input; give SQuAD JSON, JSONL or Parquet pairs with --pairs")
    marked = find_duplicates(blocks, scans, labelled)
    if marked:
        log.info("pre-pass: %d rows repeat an earlier id and will be rejected (the first is kept)", marked)
    return any(s["has_answers"] for s in scans)


def object_store_budget(cfg: LabelConfig) -> int:
    """Bytes of Ray's object store the pipeline may fill: a few blocks per actor, not the corpus.

    Without a cap Ray Data lets the (fast) windowing stage run ahead into a budget sized from
    the store, i.e. up to gigabytes of queued windows; with it, memory stays flat as the corpus grows.
    """
    block = BLOCK_BYTES_PER_TOKEN * cfg.max_seq_len * cfg.rows_per_shard * (2 if cfg.keep_teacher_logits else 1)
    return max(MIN_OBJECT_STORE_BUDGET, 4 * (cfg.num_actors + 1) * block)


def build_pipeline(
    ray,
    cfg: LabelConfig,
    teachers: list[dict],
    pending: list[Block],
    header: dict,
    groups: list[list[int]],
):
    items = [{"block": b.to_json()} for b in pending]
    mixed = (
        {"groups": groups, "combine": cfg.combine, "keep_teacher_logits": cfg.keep_teacher_logits}
        if len(groups) > 1
        else None
    )
    lengths = (cfg.max_seq_len, cfg.doc_stride, cfg.max_query_len)
    actor_args: dict[str, Any] = {"num_gpus": cfg.num_gpus_per_actor} if cfg.num_gpus_per_actor > 0 else {}
    if cfg.resources_per_actor:
        actor_args["resources"] = dict(cfg.resources_per_actor)
    if cfg.spread_actors:
        actor_args["scheduling_strategy"] = "SPREAD"
    ds = (
        ray.data.from_items(items, override_num_blocks=len(items))
        # The memory request (a block's rows and windows) also keeps Ray Data from fusing this CPU
        # stage into the teacher actors, where tokenizing would leave the GPU idle.
        .map_batches(
            window_blocks,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=1,
            memory=WINDOW_WORKER_BYTES + cfg.rows_per_shard * WINDOW_BYTES_PER_ROW,
            fn_kwargs=dict(
                out=cfg.out,
                tokenizer_name=cfg.teachers[0],
                lengths=lengths,
                max_context_chars=cfg.max_context_chars,
                trust_remote_code=cfg.trust_remote_code,
                other_tokenizers=[cfg.teachers[g[0]] for g in groups[1:]],
            ),
        )
        .map_batches(
            BlockTeacher,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=cfg.num_cpus_per_actor,
            **actor_args,
            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors, max_tasks_in_flight_per_actor=2),
            fn_constructor_kwargs=dict(
                teachers=[t["name"] for t in teachers],
                revisions=[t["revision"] for t in teachers],
                combine=cfg.combine,
                keep_teacher_logits=cfg.keep_teacher_logits,
                batch_size=cfg.batch_size,
                use_gpu=cfg.num_gpus_per_actor > 0,
                num_threads=max(1, int(cfg.num_cpus_per_actor)),
                precision=cfg.precision,
                trust_remote_code=cfg.trust_remote_code,
                lengths=lengths,
            ),
        )
        .map_batches(
            write_shards,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=0.5,
            fn_kwargs=dict(out=cfg.out, header=header, mixed=mixed),
        )
    )
    # A dataset carries its own copy of the DataContext: these settings apply to this pipeline only.
    ds.context.enable_operator_progress_bars = False  # one bar for the run, not one per stage
    ds.context.execution_options.resource_limits = ds.context.execution_options.resource_limits.copy(
        object_store_memory=object_store_budget(cfg)
    )
    return ds
