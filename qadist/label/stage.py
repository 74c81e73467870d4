"""`qadist label`: pairs -> teacher-ensemble soft labels, as Parquet shards, on Ray Data.

How exactly-once works with an at-least-once engine:

1. The driver cuts the input into row blocks of `rows_per_shard` rows (`qadist.label.blocks`: a few
   numbers per block, no rows) and names each block's shard after its file and row range. A shard
   is written whole in one atomic put (rename locally, a single PUT on S3), so a shard that exists
   is complete; blocks whose shard exists are skipped, which is all that resuming is.
2. A cheap pre-pass (Ray tasks, 16 bytes a row back to the driver) finds duplicate ids across the
   whole input, so "keep the first, reject the rest" means the same rows on every run.
3. One streaming Ray Data pipeline over the pending blocks, one row per block (`qadist.label.pipeline`;
   the stages are in `qadist.label.stages`): read + validate + window (CPU tasks; bad rows ->
   `rejects/<block>.jsonl`) -> the teacher ensemble (`ActorPoolStrategy` actors, `num_gpus`
   each) -> write the shard (CPU tasks).
   A block's windows travel as one Arrow IPC cell, so Ray Data's batching can never split or
   merge blocks: Ray's batch is one block (`batch_size=1`), and inside the actor the windows of the
   block run in length-sorted GPU batches of `batch_size` windows, each padded only to its own
   longest window. A retried task rewrites the same shard name with the same content. Memory stays
   flat: the driver holds block descriptors and the 16-byte-a-row pre-pass, workers one block.
4. The generation's manifest (`qadist.label.manifest`) is written last with a conditional put, built
   from this run's results and the footers of shards an earlier run finished. Readers (`read`) only read what the
   committed generations list. Then, and only then, `qadist.label.commit.sweep` removes old files they
   do not list and aborts orphaned multipart uploads (docs/reliability.md).

The output grows by generations (`qadist.label.generations`, `qadist.outputs`, docs/formats.md): a run
labels only the input files no committed generation holds. A fingerprint of everything that changes the labels
(teachers and their revisions, tokenizer, lengths, combine, rows_per_shard) is stored in
`<out>/_qadist_label.json` before any shard; a run with another fingerprint refuses to write into
that output unless `--overwrite`. A writer's lease (`qadist.leases`) keeps `--overwrite` and the
sweep off a live run's files; `--progress-deadline-s` (`qadist.label.deadline`) ends a stalled run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np

from qadist import console, outputs, storage
from qadist.capacity import Demand, bundle, check_capacity
from qadist.config import LabelConfig
from qadist.errors import UserError, user_error_in
from qadist.label.blocks import Block, name_by_content
from qadist.label.commit import sweep
from qadist.label.deadline import stall_cause, within_deadline
from qadist.label.generations import (
    IDS,
    commit_snapshot,
    generation_ids,
    labelled_id_parts,
    merge_sorted,
    read_ids,
    snapshot_due,
)
from qadist.label.inputs import new_blocks
from qadist.label.manifest import build_manifest, first_with_answers
from qadist.label.mixed_tokenizers import tokenizer_groups
from qadist.label.pipeline import build_pipeline, pre_pass
from qadist.leases import Lease, check_writers
from qadist.outputs import (
    MANIFEST,
    claim,
    delete_generations,
    extend,
    generation_uri,
    read_view,
    start,
)
from qadist.runtime import ensure_ray
from qadist.shards import SCHEMA_VERSION

log = logging.getLogger(__name__)
FINGERPRINT = outputs.claim_file("label")
COMMIT_ATTEMPTS = 5  # generations other runs may commit during this one before it gives up
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


def prepare_output(cfg: LabelConfig, settings: dict) -> None:
    """Claim `cfg.out` for these settings (a changed teacher, tokenizer or window setting is refused).

    An output claimed before generations existed holds its input files in the fingerprint; with
    every other setting the same, its fingerprint is rewritten without them, so it can grow."""
    uri = outputs.claim_uri(cfg.out, FINGERPRINT)
    if not cfg.overwrite and storage.exists(uri):
        held = json.loads(storage.read_text(uri))
        same = {k: v for k, v in held.items() if k not in ("inputs", "fingerprint")} == {
            k: v for k, v in json.loads(json.dumps(settings)).items() if k != "fingerprint"
        }
        if "inputs" in held and same:
            storage.write_bytes(uri, json.dumps(settings, indent=2, sort_keys=True).encode("utf-8"))
    claim(
        cfg.out,
        FINGERPRINT,
        settings,
        what="soft labels",
        overwrite=cfg.overwrite,
        fix="use another --out, or pass --overwrite to replace them",
        parts=("shards", "rejects", IDS, "compacted", MANIFEST),
        foreign=(MANIFEST, "shards"),
    )


def demands(cfg: LabelConfig) -> list[Demand]:
    """What the teacher actor pool asks Ray for, all at once."""
    each = bundle(cfg.num_cpus_per_actor, cfg.num_gpus_per_actor, cfg.resources_per_actor)
    fix = "lower --num-actors or --num-gpus-per-actor (fractions share a GPU), or add such nodes"
    return [Demand(f"{cfg.num_actors} teacher actor(s)", each, cfg.num_actors, fix)]


def check_resources(ray, cfg: LabelConfig) -> None:
    """Exit 2 now when the teacher actors can never all start (GPUs, custom resources); warn when they
    would leave no CPU for the read, window and write tasks."""
    check_capacity(ray, "label", demands(cfg))
    total = ray.cluster_resources().get("CPU", 0)
    if total and total - cfg.num_actors * cfg.num_cpus_per_actor < 1:
        log.warning(
            "num_actors=%d x num_cpus_per_actor=%g leaves under one of %g CPUs for read/window/write tasks; "
            "a Ray Data pipeline can stall this way (ray#44687): lower --num-actors",
            cfg.num_actors,
            cfg.num_cpus_per_actor,
            total,
        )


def run_label(cfg: LabelConfig) -> dict:
    """Label the pairs no committed generation of `cfg.out` holds and commit them as the next one;
    resumes a killed run. Returns the table's view after the commit (every committed generation; its
    per-generation lists hold only the generations after the newest snapshot when `complete` is False:
    `qadist.outputs.with_details` reads the rest)."""
    storage.check_s3_access(cfg.pairs, "--pairs")  # a missing bucket or refused credentials: exit 2 now
    storage.check_s3_access(cfg.out, "--out")
    teachers, tokenizer, projected, groups = resolve_teachers(cfg)
    settings, header = settings_and_header(cfg, teachers, tokenizer, projected)
    with Lease(cfg.out, "label", overwrite=cfg.overwrite) as lease:
        check_writers(cfg.out, lease)
        if cfg.overwrite:
            delete_generations(cfg.out)
        prepare_output(cfg, settings)
        ray = ensure_ray()
        check_resources(ray, cfg)
        view = label_and_commit(ray, cfg, header, settings, groups)
        if sweep_due(view):
            # Only now, and against the generations committed by now (leases looked at first: a run that
            # commits and leaves in between is in the table re-read after): what to keep is committed.
            others_writing = bool(lease.others())
            sweep(cfg.out, read_view(cfg.out), lease.stored_at, others_writing=others_writing)
    return {k: v for k, v in view.items() if k != "unchanged"}  # (`unchanged`: only the sweep's rule reads it)


def sweep_due(view: dict) -> bool:
    """Whether this run sweeps (`qadist.label.commit`): the sweep lists every file of the table, so a
    day's run does it only while the table is young (no snapshot yet), when it committed a snapshot
    (every SNAPSHOT_EVERY generations), or when it found nothing new to label; `qadist compact`
    always does. A killed run's leftovers wait at most that long (they are never read)."""
    return not view["covers"] or view["covers"] == view["generation"] or view.get("unchanged", False)


def settings_and_header(
    cfg: LabelConfig, teachers: list[dict], tokenizer: dict, projected: list[dict]
) -> tuple[dict, dict]:
    """The settings that claim the output (with their fingerprint) and the header every shard carries."""
    settings = {k: getattr(cfg, k) for k in SETTINGS} | {
        "teachers": teachers,
        "tokenizer": tokenizer,
        "schema_version": SCHEMA_VERSION,
    }
    settings["fingerprint"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]
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
    return settings, header


def label_and_commit(ray, cfg: LabelConfig, header: dict, settings: dict, groups: list[list[int]]) -> dict:
    """Label a generation and commit it with a conditional put; when another run took its number,
    plan again against the newcomer (up to COMMIT_ATTEMPTS times). What readers see afterwards."""
    for _ in range(COMMIT_ATTEMPTS):
        view = read_view(cfg.out, details=False)  # planning needs counts, inputs and ids, not every shard
        planned = label_generation(ray, cfg, view, header, settings, groups)
        if planned is None:  # nothing new
            assert view is not None, "a first generation always has input"
            console.summary(
                f"qadist label: {cfg.out} is already complete: it holds every pair of {cfg.pairs} "
                f"({view['generation']} generation(s), "
                f"{view['counts']['pairs_labeled']:,} pairs, {view['counts']['windows']:,} windows); nothing to do",
                log,
            )
            return {**view, "unchanged": True}
        manifest, labelled = planned
        number = manifest["generation"]
        if storage.write_if_absent(generation_uri(cfg.out, number), json.dumps(manifest, indent=2).encode()):
            console.summary(f"qadist {manifest['run']['summary']}", log)
            return committed(ray, cfg, view, manifest, labelled)
        stored = json.loads(storage.read_text(generation_uri(cfg.out, number)))
        if stored.get("plan") == manifest["plan"]:
            # The same job, run twice at once, committed the same generation first (or this run's own
            # commit succeeded and its reply was lost): the stored one counts.
            log.warning(
                "%s: a manifest appeared while this run worked (generation %d, with the same rows); kept it",
                cfg.out,
                number,
            )
            return committed(ray, cfg, view, stored, labelled)
        log.warning(
            "%s: another run committed generation %d while this one labelled; planning again against it "
            "(shards whose rows it does not change are reused)",
            cfg.out,
            number,
        )
    raise UserError(
        f"{cfg.out}: other runs committed {COMMIT_ATTEMPTS} generations while this one labelled; "
        "re-run when they are done (finished shards are reused)"
    )


def committed(ray, cfg: LabelConfig, view: dict | None, manifest: dict, labelled: list[np.ndarray]) -> dict:
    """The view with the generation just committed; a snapshot of it when SNAPSHOT_EVERY generations
    have been committed since the last one (`labelled`: the ids of every earlier generation, in the
    parts `labelled_id_parts` read; merged only here, on a snapshot's day)."""
    manifest = {**manifest, "generation": manifest.get("generation", 1)}
    after = start(manifest) if view is None else extend(view, manifest)
    after = {"snapshot": 0, "covers": 0, "kept": [], "retired": [], "details": None, "complete": True, **after}
    if snapshot_due(after) and manifest.get("ids"):
        own = read_ids(cfg.out, manifest["ids"]["path"])
        if (number := commit_snapshot(cfg.out, after, merge_sorted([*labelled, own]))) is not None:
            log.info("%s: snapshot %d written (generations 1..%d)", cfg.out, number, after["generation"])
            return {**after, "snapshot": number, "covers": after["generation"]}
    return after


def label_generation(
    ray, cfg: LabelConfig, view: dict | None, header: dict, settings: dict, groups: list
) -> tuple[dict, list[np.ndarray]] | None:
    """Label the pairs of the input files no committed generation holds; the next generation's
    manifest (not yet committed) and the ids of the earlier ones, or None when there is nothing new."""
    started = time.perf_counter()
    blocks, inputs, pairs_generation = new_blocks(cfg, view)
    if not blocks:
        return None
    number = (view["generation"] if view else 0) + 1
    with_answers, labelled = plan_generation(ray, cfg, view, blocks, started)
    done, pending = pending_blocks(cfg, blocks)
    announce(cfg, number, header, blocks, inputs, done, pending)
    results = label_blocks(ray, cfg, header, groups, pending)
    manifest = build_manifest(cfg, blocks, results, done, header, settings, time.perf_counter() - started)
    plan = hashlib.sha256(json.dumps(sorted(b.name for b in blocks)).encode("utf-8")).hexdigest()[:16]
    ids = generation_ids(ray, cfg.out, number, plan, manifest["shards"])  # before the manifest commits
    return {
        **manifest,
        "generation": number,
        "inputs": inputs,
        "with_answers": with_answers,
        "plan": plan,
        "ids": ids,
        **({"pairs_generation": pairs_generation} if pairs_generation is not None else {}),
        "committed_at": time.time(),
    }, labelled


def plan_generation(
    ray, cfg: LabelConfig, view: dict | None, blocks: list[Block], started: float
) -> tuple[bool, list[np.ndarray]]:
    """The pre-pass over the new blocks' ids, then each block named by its content; whether the
    shards carry answers (generation 1 decided it for the whole output), and the earlier ids."""
    labelled = labelled_id_parts(ray, cfg.out, view)  # sorted parts, not merged (`labelled_id_parts`)
    planned = time.perf_counter()
    with_answers = pre_pass(ray, blocks, cfg.max_context_chars, labelled)
    if view is not None:  # one output, one schema: the first generation decided whether shards carry answers
        with_answers = first_with_answers(cfg.out, view, with_answers)
    log.info(
        "generation %d: planned %d blocks in %.1fs; pre-pass over the ids (%d labelled earlier) in %.1fs",
        (view["generation"] if view else 0) + 1,
        len(blocks),
        planned - started,
        sum(len(p) for p in labelled),
        time.perf_counter() - planned,
    )
    for b in blocks:
        b.with_answers = with_answers
        name_by_content(b)
    return with_answers, labelled


def pending_blocks(cfg: LabelConfig, blocks: list[Block]) -> tuple[set[str], list[Block]]:
    """The names of the blocks whose shard exists already (an earlier run finished them), and the rest.
    One look per new block, not a listing of every shard the table ever had."""
    done = {b.name for b in blocks if storage.exists(storage.join(cfg.out, "shards", f"{b.name}.parquet"))}
    return done, [b for b in blocks if b.name not in done]


def announce(
    cfg: LabelConfig, number: int, header: dict, blocks: list[Block], inputs: list[dict], done: set, pending: list
) -> None:
    """The banners before the pipeline runs: what a resume skips, the run's shape, each projection."""
    if done:
        console.banner(
            f"qadist label: resume: {len(done)} of {len(blocks)} shards already finished; skipping them, "
            f"computing {len(pending)}",
            log,
        )
    what = f"generation {number}: " if number > 1 else ""
    new_rows = sum(b.end - b.start for b in blocks)
    console.banner(
        f"qadist label: {what}{cfg.pairs} -> {cfg.out}: {new_rows:,} new rows in {len(inputs)} file(s); "
        f"{len(pending)} of {len(blocks)} blocks of <= {cfg.rows_per_shard:,} rows to label, {len(cfg.teachers)} "
        f"teacher(s) ({cfg.combine}), {cfg.num_actors} actor(s) x {cfg.num_gpus_per_actor:g} GPU, "
        f"batch {cfg.batch_size} windows, windows of {cfg.max_seq_len} (stride {cfg.doc_stride})",
        log,
    )
    for p in header.get("projected_tokenizers", []):
        console.banner(
            f"qadist label: projection on: {', '.join(p['teachers'])} read the pairs with tokenizer {p['hash']} "
            f"and are carried through characters onto {header['tokenizer']['name']}'s windows "
            f"(tokenizer {header['tokenizer']['hash']})",
            log,
        )


def label_blocks(ray, cfg: LabelConfig, header: dict, groups: list, pending: list[Block]) -> dict[str, dict]:
    """The pending blocks through the pipeline (`qadist.label.pipeline`); each block's shard stats by name."""
    results: dict[str, dict] = {}
    try:
        rows = build_pipeline(ray, cfg, header["teachers"], pending, header, groups).iter_rows() if pending else ()
        for row in within_deadline(rows, cfg.progress_deadline_s, lambda: stall_cause(len(pending) - len(results))):
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
    except Exception as e:
        # Ray retries lost workers and actors itself, the S3 clients transient errors; what arrives here
        # is not retried (an error raised by a stage, S3 errors past their retries, the progress deadline).
        # Finished shards stay.
        log_failure = log.info if user_error_in(e) else log.error  # a user error is the command's one line
        log_failure(
            "%s: label run failed after %d of %d pending shards; no manifest written. Re-running the same command "
            "resumes (finished shards are skipped)",
            cfg.out,
            len(results),
            len(pending),
        )
        raise
    return results
