"""`qadist compact`: many small label generations rewritten into fewer, larger shards, as one new committed state.

A year of daily generations is thousands of small shards; every distill epoch opens each. Compaction
commits a snapshot (`_snapshot-<k:06d>.json`, `qadist.label.generations`) whose shards are merged:
1. Plan against the table's view (its newest snapshot and the generations after it): the shards
   under `target_rows // 2` windows, in table order, grouped into shards of about `target_rows`
   windows (each group whole shards, so every window of a pair stays in one shard). Bigger shards
   are listed as they are.
2. Write each merged shard whole (`compacted/s<k>-<i>-<plan>.parquet`, the plan's hash in its name:
   a re-run of the same plan finds it finished and skips it; another plan never writes that name),
   then the snapshot's id summary, then the snapshot itself with a conditional put: the commit point.
   Before it, readers see the table as it was; after it, the merged shards in place of the small ones.
   Never both, never neither. A killed compaction leaves unlisted files only (swept later); its
   re-run plans the same and commits. A run that finds its snapshot number taken plans again.
3. The shards it replaced stay, `kept` by the snapshot, so `--generation N` still reads generation N's
   own shards, and a reader that resolved the table before the commit can finish its epoch.
   Retention (docs/operations.md): a later compaction removes a replaced file once the snapshot that
   replaced it is `retain_hours` old and its generation is not one of the newest `keep_generations`;
   those generations are recorded as `retired` (first, in the snapshot that is committed; the files
   go after), and `--generation N` for one of them says so.
It holds a writer's lease like `qadist label` (so neither's sweep touches the other's uncommitted
files) and refuses beside an `--overwrite`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from qadist import console, storage
from qadist.config import CompactConfig
from qadist.errors import UserError
from qadist.label.commit import sweep
from qadist.label.generations import commit_snapshot, labelled_id_hashes
from qadist.leases import Lease, check_writers
from qadist.outputs import read_view
from qadist.shards import HEADER_KEY, SHARD_KEY, read_footer, read_shard, shard_bytes

log = logging.getLogger(__name__)
COMMIT_ATTEMPTS = 5
FOLDER = "compacted"


def plan_groups(shards: list[dict], target_rows: int) -> list[list[dict]]:
    """The small shards (under target_rows // 2 windows) in table order, grouped into runs of about
    target_rows windows; a last group under half a target joins the one before. [] when fewer than two."""
    small = [s for s in shards if s["rows"] < target_rows // 2]
    if len(small) < 2:
        return []
    groups: list[list[dict]] = [[]]
    for s in small:
        if groups[-1] and sum(x["rows"] for x in groups[-1]) + s["rows"] > target_rows:
            groups.append([])
        groups[-1].append(s)
    if len(groups) > 1 and (len(groups[-1]) < 2 or sum(x["rows"] for x in groups[-1]) < target_rows // 2):
        last = groups.pop()  # (not `groups[-2] += groups.pop()`: that stores into the slot before the pop)
        groups[-1].extend(last)
    return [g for g in groups if len(g) > 1]


def retirable(view: dict, cfg: CompactConfig, now: float) -> list[dict]:
    """The kept files a compaction may remove now: replaced by a snapshot at least `retain_hours` ago,
    of a generation older than the newest `keep_generations` (or a merged shard replaced in turn)."""
    oldest_kept = view["generation"] - cfg.keep_generations
    return [
        k
        for k in view["kept"]
        if k.get("since") is not None
        and k["since"] <= now - cfg.retain_hours * 3600
        and (k.get("generation") is None or k["generation"] <= oldest_kept)
    ]


def merge(out: str, name: str, group: list[dict]) -> dict:
    """One merged shard from whole shards, in order (skipped when a killed run of this plan wrote it)."""
    uri = storage.join(out, FOLDER, f"{name}.parquet")
    entry = {
        "path": f"{FOLDER}/{name}.parquet",
        "rows": sum(s["rows"] for s in group),
        "pairs": sum(s["pairs"] for s in group),
        "pairs_in": sum(s.get("pairs_in", s["pairs"]) for s in group),
        "pairs_rejected": sum(s.get("pairs_rejected", 0) for s in group),
        "merged_from": len(group),
        "rejects": None,
        "generation": None,
    }
    if storage.exists(uri):
        return entry
    header = read_footer(storage.join(out, group[0]["path"]))[0]
    tables = [read_shard(storage.join(out, s["path"])).replace_schema_metadata(None) for s in group]
    table = pa.concat_tables(tables)
    shard = {"block": name, "windows": table.num_rows, "pairs_labeled": entry["pairs"], "merged_from": len(group)}
    meta = {HEADER_KEY: json.dumps(header), SHARD_KEY: json.dumps(shard)}
    storage.write_bytes(uri, shard_bytes(table.replace_schema_metadata(meta)))
    return entry


def compacted_view(out: str, view: dict, groups: list[list[dict]], retire: list[dict], now: float) -> dict:
    """The view the snapshot commits: merged shards in place of their sources (which are kept), the
    retired files out of `kept`, their generations named in `retired`."""
    number = view["snapshot"] + 1
    plan = hashlib.sha256(json.dumps([[s["path"] for s in g] for g in groups]).encode()).hexdigest()[:12]
    with ThreadPoolExecutor(4) as pool:
        merged = list(pool.map(lambda ig: merge(out, f"s{number:06d}-{ig[0]:05d}-{plan}", ig[1]), enumerate(groups)))
    replaced = {s["path"] for g in groups for s in g}
    gone = {k["path"] for k in retire}
    shards = [s for s in view["shards"] if s["path"] not in replaced] + merged
    kept = [k for k in view["kept"] if k["path"] not in gone] + [
        {"path": s["path"], "generation": s.get("generation"), "since": now} for g in groups for s in g
    ]
    retired = sorted(set(view["retired"]) | {k["generation"] for k in retire if k.get("generation") is not None})
    return {
        **view,
        "shards": shards,
        "kept": kept,
        "retired": retired,
        "compaction": {"plan": plan, "merged": len(replaced), "into": len(merged), "removed": len(gone), "at": now},
    }


def small_rows(view: dict, target_rows: int) -> int:
    """The windows in the table's small shards (under target_rows // 2 each: the ones a compaction merges)."""
    return sum(s["rows"] for s in view["shards"] if s["rows"] < target_rows // 2)


def plan(view: dict, cfg: CompactConfig, now: float) -> tuple[list[list[dict]], list[dict]]:
    """What a compaction of `view` does now: the merge groups and the replaced files it removes; nothing
    while the small shards hold under `cfg.min_rows` windows (their files past retention wait too)."""
    if cfg.min_rows and small_rows(view, cfg.target_rows) < cfg.min_rows:
        return [], []
    return plan_groups(view["shards"], cfg.target_rows), retirable(view, cfg, now)


def compaction_done(cfg: CompactConfig) -> str | None:
    """Why the table needs no compaction now (the pipeline's `finished` rule: `qadist.stages`), or None
    when a run would merge or remove something. One read of the view (its snapshot's details included)."""
    view = read_view(cfg.labels)
    if view is None:
        return "no committed generation to compact"
    groups, retire = plan(view, cfg, time.time())
    if groups or retire:
        return None
    small = small_rows(view, cfg.target_rows)
    return f"{len(view['shards'])} shards; {small:,} windows in small ones (merged from {max(cfg.min_rows, 1):,})"


def run_compact(cfg: CompactConfig) -> dict:
    """Merge the label table's small shards into a committed snapshot and apply the retention rule;
    returns the table's view afterwards."""
    storage.check_s3_access(cfg.labels, "--labels")
    started = time.perf_counter()
    with Lease(cfg.labels, "compact") as lease:
        check_writers(cfg.labels, lease)
        for _ in range(COMMIT_ATTEMPTS):
            view = read_view(cfg.labels)
            if view is None:
                raise UserError(f"{cfg.labels}: no committed generation to compact; run `qadist label` first")
            now = time.time()
            groups, retire = plan(view, cfg, now)
            if not groups and not retire:
                waits = f"; merging waits for {cfg.min_rows:,} windows in them" if cfg.min_rows else ""
                console.summary(
                    f"qadist compact: {cfg.labels}: nothing to do ({len(view['shards'])} shards, none to merge under "
                    f"{cfg.target_rows // 2:,} windows{waits}; no replaced file past retention)",
                    log,
                )
                return view
            console.banner(
                f"qadist compact: {cfg.labels}: generations 1..{view['generation']}: merging "
                f"{sum(len(g) for g in groups):,} shards into {len(groups)} of ~{cfg.target_rows:,} windows; "
                f"removing {len(retire)} replaced file(s) past retention",
                log,
            )
            after = compacted_view(cfg.labels, view, groups, retire, now)
            hashes = labelled_id_hashes(lazy_ray(view), cfg.labels, view)
            number = commit_snapshot(cfg.labels, after, hashes, compaction=after["compaction"])
            if number is not None:
                break
            log.warning("%s: another run committed a snapshot while this one merged; planning again", cfg.labels)
        else:
            raise UserError(f"{cfg.labels}: other runs committed {COMMIT_ATTEMPTS} snapshots meanwhile; re-run later")
        for k in retire:  # committed first: a killed run leaves unlisted files, which the sweep removes
            storage.delete(storage.join(cfg.labels, k["path"]))
        sweep(cfg.labels, read_view(cfg.labels), lease.stored_at, others_writing=bool(lease.others()))
    final = read_view(cfg.labels)
    assert final is not None
    console.summary(
        f"qadist compact: {cfg.labels}: snapshot {number}: {after['compaction']['merged']:,} shards -> "
        f"{after['compaction']['into']:,}; the table now reads {len(final['shards']):,} shards "
        f"(was {len(view['shards']):,}); {len(retire)} replaced file(s) removed; "
        f"{time.perf_counter() - started:.1f}s",
        log,
    )
    return final


def lazy_ray(view: dict) -> Any:
    """Ray only for generations older than id summaries (their shards are read); else nothing starts."""
    if any("shards" in s and s["shards"] for s in view["id_sources"]):
        from qadist.runtime import ensure_ray

        return ensure_ray()
    return None
