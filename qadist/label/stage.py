"""`qadist label`: pairs -> teacher-ensemble soft labels, as Parquet shards, on Ray Data.

How exactly-once works with an at-least-once engine:

1. The driver cuts the input into row blocks of `rows_per_shard` rows (`qadist.label.blocks`: a few
   numbers per block, no rows) and names each block's shard after its file and row range. A shard
   is written whole in one atomic put (rename locally, a single PUT on S3), so a shard that exists
   is complete; blocks whose shard exists are skipped, which is all that resuming is.
2. A cheap pre-pass (Ray tasks, 16 bytes a row back to the driver) finds duplicate ids across the
   whole input, so "keep the first, reject the rest" means the same rows on every run.
3. One streaming Ray Data pipeline over the pending blocks, one row per block (the stages are in
   `qadist.label.stages`): read + validate + window (CPU tasks; bad rows ->
   `rejects/<block>.jsonl`) -> the teacher ensemble (`ActorPoolStrategy` actors, `num_gpus`
   each) -> write the shard (CPU tasks).
   A block's windows travel as one Arrow IPC cell, so Ray Data's batching can never split or
   merge blocks: Ray's batch is one block (`batch_size=1`), and inside the actor the windows of the
   block run in length-sorted GPU batches of `batch_size` windows, each padded only to its own
   longest window. A retried task rewrites the same shard name with the same content. Memory stays
   flat: the driver holds block descriptors and the 16-byte-a-row pre-pass, workers one block.
4. The manifest is written last with a conditional put, built from this run's results and the
   footers of shards an earlier run finished. Readers (`read`) only read what it lists. Then, and
   only then, `qadist.commit.sweep` removes files it does not list and aborts orphaned multipart
   uploads (docs/reliability.md).

A fingerprint of everything that changes the output (teachers and their revisions, tokenizer,
lengths, combine, rows_per_shard, the input files and their sizes) is stored in
`<out>/_fingerprint.json` before any shard; a run with another fingerprint refuses to write into
that output unless `--overwrite`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from qadist import console, storage
from qadist.config import LabelConfig, to_dict
from qadist.errors import UserError, user_error_in
from qadist.label.blocks import Block, find_duplicates, plan_blocks, scan_block
from qadist.label.commit import sweep
from qadist.label.mixed_tokenizers import tokenizer_groups
from qadist.label.stages import BlockTeacher, memory_mb, window_blocks, write_shards
from qadist.outputs import MANIFEST, claim, manifest_uri, read_json
from qadist.runtime import ensure_ray
from qadist.shards import SCHEMA_VERSION, read_footer

log = logging.getLogger(__name__)
FINGERPRINT = "_fingerprint.json"
BLOCK_BYTES_PER_TOKEN = 24  # packed windows + logits per max_seq_len token of a row, with room to spare
MIN_OBJECT_STORE_BUDGET = 32 << 20
WINDOW_WORKER_BYTES = 512 << 20  # a worker with the tokenizer loaded (measured ~320 MiB)
WINDOW_BYTES_PER_ROW = 16 << 10  # a pair's raw row plus its windows, generously
SETTINGS = (
    "pairs",
    "max_seq_len",
    "doc_stride",
    "max_query_len",
    "combine",
    "keep_teacher_logits",
    "rows_per_shard",
    "max_context_chars",
    "precision",
)


# ---- the driver ----------------------------------------------------------------------------------


def resolve_teachers(cfg: LabelConfig) -> tuple[list[dict], dict, list[dict], list[list[int]]]:
    """Teachers with pinned revisions; the stored tokenizer (the first teacher's); one entry per further
    tokenizer of the ensemble (its teachers, projected onto the first's windows); the teacher indices
    of each tokenizer, the stored one first (`tokenizer_groups`)."""
    from qadist.models import load_tokenizer, model_revision, tokenizer_fingerprint

    if cfg.revisions is not None and len(cfg.revisions) != len(cfg.teachers):
        raise UserError(
            f"revisions has {len(cfg.revisions)} entries for {len(cfg.teachers)} teachers; "
            "give one revision per teacher"
        )
    fingerprints = [tokenizer_fingerprint(load_tokenizer(t, cfg.trust_remote_code)) for t in cfg.teachers]
    revisions = cfg.revisions or [model_revision(t, cfg.trust_remote_code) for t in cfg.teachers]
    groups = tokenizer_groups(fingerprints)
    projected = [
        {"name": cfg.teachers[g[0]], "hash": fingerprints[g[0]], "teachers": [cfg.teachers[i] for i in g]}
        for g in groups[1:]
    ]
    return (
        [{"name": t, "revision": r} for t, r in zip(cfg.teachers, revisions)],
        {"name": cfg.teachers[0], "hash": fingerprints[0]},
        projected,
        groups,
    )


def prepare_output(cfg: LabelConfig, settings: dict) -> dict | None:
    """Claim `cfg.out` for these settings; returns the manifest when the same run already finished."""
    resumed = claim(
        cfg.out,
        FINGERPRINT,
        settings,
        what="soft labels",
        overwrite=cfg.overwrite,
        fix="use another --out, or pass --overwrite to replace them",
        parts=("shards", "rejects", MANIFEST),
        foreign=(MANIFEST, "shards"),
    )
    manifest = manifest_uri(cfg.out)
    return read_json(manifest) if resumed and storage.exists(manifest) else None


def pre_pass(ray, blocks: list[Block], max_context_chars: int) -> bool:
    """Scan every block (Ray tasks, bounded in flight): marks duplicate ids; True when any pair has answers."""
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
    marked = find_duplicates(blocks, scans)
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


def check_resources(ray, cfg: LabelConfig) -> None:
    """Warn (an autoscaler may still add nodes) when the pool cannot start or would starve the tasks."""
    resources = ray.cluster_resources()
    total = resources.get("CPU", 0)
    if total and total - cfg.num_actors * cfg.num_cpus_per_actor < 1:
        log.warning(
            "num_actors=%d x num_cpus_per_actor=%g leaves under one of %g CPUs for read/window/write tasks; "
            "a Ray Data pipeline can stall this way (ray#44687): lower --num-actors",
            cfg.num_actors,
            cfg.num_cpus_per_actor,
            total,
        )
    if cfg.num_gpus_per_actor > resources.get("GPU", 0):
        log.warning(
            "num_gpus_per_actor=%g but the cluster has %g GPUs now; the teacher actors wait until GPU nodes join",
            cfg.num_gpus_per_actor,
            resources.get("GPU", 0),
        )


def run_label(cfg: LabelConfig) -> dict:
    """Label `cfg.pairs` into `cfg.out` (shards, rejects, manifest); resumes a killed run. Returns the manifest."""
    started, started_at = time.perf_counter(), time.time()
    storage.check_s3_access(
        cfg.pairs, "--pairs"
    )  # a missing bucket or refused credentials: exit 2 now, not after retries
    storage.check_s3_access(cfg.out, "--out")
    teachers, tokenizer, projected, groups = resolve_teachers(cfg)
    blocks, inputs = plan_blocks(cfg.pairs, cfg.rows_per_shard)
    settings = {k: getattr(cfg, k) for k in SETTINGS} | {
        "teachers": teachers,
        "tokenizer": tokenizer,
        "inputs": inputs,
        "schema_version": SCHEMA_VERSION,
    }
    settings["fingerprint"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    finished = prepare_output(cfg, settings)
    if finished is not None:
        console.summary(
            f"qadist label: {cfg.out} is already complete with these settings ({len(finished['shards'])} shards, "
            f"{finished['counts']['windows']:,} windows); nothing to do",
            log,
        )
        sweep(cfg.out, finished, started_at)  # a re-run repairs what a killed or concurrent run left behind
        return finished
    header = {
        "schema_version": SCHEMA_VERSION,
        "teachers": teachers,
        "tokenizer": tokenizer,
        "max_seq_len": cfg.max_seq_len,
        "doc_stride": cfg.doc_stride,
        "max_query_len": cfg.max_query_len,
        "combine": cfg.combine,
        # Teachers whose tokenizer is not `tokenizer`: labelled through their own windows, projected
        # onto these (docs/formats.md); absent when the ensemble shares one tokenizer.
        **({"projected_tokenizers": projected} if projected else {}),
    }
    ray = ensure_ray()
    check_resources(ray, cfg)
    planned = time.perf_counter()
    with_answers = pre_pass(ray, blocks, cfg.max_context_chars)
    log.info(
        "planned %d blocks in %.1fs; pre-pass over the ids in %.1fs",
        len(blocks),
        planned - started,
        time.perf_counter() - planned,
    )
    for b in blocks:
        b.with_answers = with_answers
    existing = (
        set(storage.list_files(storage.join(cfg.out, "shards"), (".parquet",)))
        if storage.exists(storage.join(cfg.out, "shards"))
        else set()
    )
    done = {b.name for b in blocks if storage.join(cfg.out, "shards", f"{b.name}.parquet") in existing}
    pending = [b for b in blocks if b.name not in done]
    if done:
        console.banner(
            f"qadist label: resume: {len(done)} of {len(blocks)} shards already finished; skipping them, "
            f"computing {len(pending)}",
            log,
        )
    console.banner(
        f"qadist label: {cfg.pairs} -> {cfg.out}: {len(pending)} of {len(blocks)} blocks of "
        f"<= {cfg.rows_per_shard:,} rows to label, {len(teachers)} teacher(s) ({cfg.combine}), "
        f"{cfg.num_actors} actor(s) x {cfg.num_gpus_per_actor:g} GPU, "
        f"batch {cfg.batch_size} windows, windows of {cfg.max_seq_len} (stride {cfg.doc_stride})",
        log,
    )
    for p in projected:
        console.banner(
            f"qadist label: projection on: {', '.join(p['teachers'])} read the pairs with tokenizer {p['hash']} "
            f"and are carried through characters onto {tokenizer['name']}'s windows (tokenizer {tokenizer['hash']})",
            log,
        )
    results: dict[str, dict] = {}
    try:
        for row in build_pipeline(ray, cfg, teachers, pending, header, groups).iter_rows() if pending else ():
            stats = json.loads(row["stats"])
            results[stats["block"]] = stats
            log.info(
                "shard %s: %d pairs -> %d windows (%d rejected) [%d/%d]",
                stats["block"],
                stats["pairs_in"],
                stats["windows"],
                stats["pairs_rejected"],
                len(results),
                len(pending),
            )
        missing = [b.name for b in pending if b.name not in results]
        assert not missing, f"pipeline finished without shards for {missing[:3]}"
        manifest = build_manifest(cfg, blocks, results, done, header, settings, time.perf_counter() - started)
        committed = storage.write_if_absent(manifest_uri(cfg.out), json.dumps(manifest, indent=2).encode("utf-8"))
    except Exception as e:
        # Ray retries lost workers and actors itself, the S3 clients transient errors; what arrives here
        # is not retried (an error raised by a stage, S3 errors past their retries). Finished shards stay.
        log_failure = log.info if user_error_in(e) else log.error  # a user error is the command's one line
        log_failure(
            "%s: label run failed after %d of %d pending shards; no manifest written. Re-running the same command "
            "resumes (finished shards are skipped)",
            cfg.out,
            len(results),
            len(pending),
        )
        raise
    if not committed:
        # A concurrent run with the same settings committed first, or our own commit's reply was lost
        # and its retry found the object: either way the stored manifest is the one that counts.
        log.warning(
            "%s: a manifest appeared while this run worked (a concurrent run of the same job, or this run's own "
            "commit whose reply was lost); kept the stored one",
            cfg.out,
        )
        manifest = json.loads(storage.read_text(manifest_uri(cfg.out)))
    else:
        console.summary("qadist " + manifest["run"]["summary"], log)
    sweep(cfg.out, manifest, started_at)  # only now: the committed manifest says what to keep
    return manifest


def build_manifest(
    cfg: LabelConfig, blocks: list[Block], results: dict, done: set, header: dict, settings: dict, seconds: float
) -> dict:
    shards, counts = [], {"pairs_in": 0, "pairs_labeled": 0, "pairs_rejected": 0, "windows": 0}
    for b in blocks:
        stats = results.get(b.name) or read_footer(storage.join(cfg.out, "shards", f"{b.name}.parquet"))[1]
        for k in counts:
            counts[k] += stats[k]
        shards.append(
            {
                "path": f"shards/{b.name}.parquet",
                "rows": stats["windows"],
                "pairs": stats["pairs_labeled"],
                **{k: stats[k] for k in ("source", "row_start", "row_end", "pairs_in", "pairs_rejected", "rejects")},
                "node_id": stats.get("node_id"),
            }
        )
    assert counts["pairs_in"] == counts["pairs_labeled"] + counts["pairs_rejected"], counts
    run = summarize(list(results.values()), sorted(done), seconds)
    return {
        **header,
        "config": to_dict(cfg),
        "fingerprint": settings["fingerprint"],
        "inputs": settings["inputs"],
        "keep_teacher_logits": cfg.keep_teacher_logits,
        "counts": counts,
        "shards": shards,
        "rejects": [s["rejects"] for s in shards if s["rejects"]],
        "run": run,
    }


def summarize(results: list[dict], skipped: list[str], seconds: float) -> dict:
    """This run's throughput: pairs/s, windows/s, real tokens/s, the padding fraction, peak RSS."""
    tot = {
        k: sum(r.get(k, 0) for r in results)
        for k in (
            "pairs_in",
            "windows",
            "real_tokens",
            "padded_tokens",
            "teacher_seconds",
            "teacher_cpu_seconds",
            "projection_seconds",
        )
    }
    padding = 1 - tot["real_tokens"] / tot["padded_tokens"] if tot["padded_tokens"] else 0.0
    rss = {
        f"{stage}_{kind}_mb": max((r.get(f"{stage}_{kind}_mb", 0.0) for r in results), default=0.0)
        for stage in ("window", "teacher", "writer")
        for kind in ("rss", "private", "shared")
    }
    s = max(seconds, 1e-9)
    run = {
        "seconds": round(seconds, 3),
        "shards_computed": len(results),
        "shards_skipped": len(skipped),
        "skipped": skipped,
        **tot,
        "pairs_per_s": tot["pairs_in"] / s,
        "windows_per_s": tot["windows"] / s,
        "real_tokens_per_s": tot["real_tokens"] / s,
        "padding_fraction": padding,
        **memory_mb("driver"),
        **rss,
    }
    run["summary"] = (
        f"label: {tot['pairs_in']:,} pairs -> {tot['windows']:,} windows in {seconds:.1f}s: "
        f"{run['pairs_per_s']:.1f} pairs/s, {run['windows_per_s']:.1f} windows/s, "
        f"{run['real_tokens_per_s']:,.0f} real tokens/s, padding {padding:.1%} of "
        f"computed tokens; {len(results)} shards written, {len(skipped)} skipped (finished earlier)"
    )
    if tot["projection_seconds"]:
        run["summary"] += (
            f"; projecting the other tokenizers' teachers took {tot['projection_seconds']:.1f} CPU s in the write "
            f"tasks (the actors: {tot['teacher_seconds']:.1f}s)"
        )
    return run
