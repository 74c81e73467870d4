"""`qadist select`: score every labelled pair from its soft labels, keep the most worth labelling.

Scoring runs on Ray Data, one task per shard (a shard holds each of its pairs' windows together,
so a pair is scored whole); the driver keeps only the best `budget` candidates (4x with
`--diversity`) as the scores stream in, so memory stays flat in the table's size. The selected
pairs' questions and passages are then read from the pairs the label run read (its manifest
names them), streamed and filtered by id.

Output in --out: `selected.jsonl` (rank, id, question, score, strategy, reason, the ensemble's
answer), `label_studio_tasks.json` and `label_studio_config.xml` (import both into a Label
Studio project), `near_duplicates.jsonl` with --diversity, and `_manifest.json` with the counts.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from qadist import console, storage
from qadist.config import SelectConfig, to_dict
from qadist.errors import UserError
from qadist.label_studio import LABEL_CONFIG, is_task
from qadist.outputs import claim, claim_file, manifest_uri
from qadist.rows import Unparsable, iter_raw_rows, jsonl_bytes
from qadist.select.label_studio import task
from qadist.select.scores import STRATEGIES, group_windows, score_pair
from qadist.shards import list_values, listed_shards, nested_values, read_manifest, read_shard

log = logging.getLogger(__name__)

OUTPUTS = ("selected.jsonl", "label_studio_tasks.json", "label_studio_config.xml", "near_duplicates.jsonl")
RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("score", pa.float64()),
        ("reason", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("no_answer_probability", pa.float64()),
        ("windows", pa.int32()),
    ]
)


def shard_windows(uri: str, per_teacher: bool) -> list[dict]:
    """A shard's windows as dicts of numpy arrays (the columns scoring reads, nothing else)."""
    columns = ["id", "offsets", "start_logits", "end_logits"]
    columns += ["teacher_start_logits", "teacher_end_logits"] if per_teacher else []
    table = read_shard(uri, columns)
    rows = {
        "id": table.column("id").to_pylist(),
        "offsets": nested_values(table.column("offsets"), 2),
        "start_logits": list_values(table.column("start_logits")),
        "end_logits": list_values(table.column("end_logits")),
    }
    if per_teacher:
        for name in ("teacher_start_logits", "teacher_end_logits"):
            rows[name] = [v.astype(np.float32) for v in nested_values(table.column(name))]
    return [{k: rows[k][i] for k in rows} for i in range(table.num_rows)]


def score_shards(batch: pa.Table, strategy: str, seed: int) -> pa.Table:
    """Ray Data task: shard URIs -> one row per pair with its score, reason and the ensemble's answer."""
    out: list[dict] = []
    for uri in batch.column("uri").to_pylist():
        for windows in group_windows(shard_windows(uri, STRATEGIES[strategy].per_teacher)):
            s = score_pair(windows, None, strategy, seed)
            p = s["prediction"]
            out.append(
                {
                    **{k: s[k] for k in ("id", "score", "reason", "windows")},
                    **{k: p[k] for k in ("start", "end", "no_answer_probability")},
                }
            )
    return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)


def read_exclude(uri: str) -> set[str]:
    """Ids of pairs already labelled: a text file of ids, or rows with `id` (pairs, selected.jsonl,
    a Label Studio export: the task's `data.id`)."""
    ids: set[str] = set()
    if storage.basename(uri).endswith(".txt"):
        return {line.strip() for line in storage.read_text(uri).split("\n") if line.strip()}
    for source, n, raw in iter_raw_rows(uri, "--exclude"):
        row = raw.get("data") if is_task(raw) else raw
        if isinstance(raw, Unparsable) or not isinstance(row, dict) or row.get("id") is None:
            raise UserError(f"{source}: row {n} has no 'id'; --exclude takes rows with an 'id' or a .txt of ids")
        ids.add(str(row["id"]))
    return ids


def check_strategy(manifest: dict, cfg: SelectConfig) -> None:
    """What the strategy needs of the label table (`Strategy.per_teacher`) is there."""
    if not STRATEGIES[cfg.strategy].per_teacher:
        return
    if not manifest.get("keep_teacher_logits"):
        raise UserError(
            f"{cfg.labels}: these soft labels hold only the ensemble's combined logits, and --strategy "
            f"{cfg.strategy} needs each teacher's; label with --keep-teacher-logits (into a new --out), or use "
            "--strategy entropy or margin"
        )
    if len(manifest.get("teachers") or []) < 2:
        raise UserError(f"{cfg.labels}: one teacher cannot disagree with itself; use --strategy entropy or margin")


def top_candidates(cfg: SelectConfig, manifest: dict, keep: int, excluded: set[str]) -> tuple[list[dict], dict]:
    """Stream every pair's score through Ray Data; the best `keep` (ties by id) and the counts."""
    from qadist.runtime import ensure_ray

    ray = ensure_ray()
    uris = listed_shards(cfg.labels, manifest)
    ds = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=max(len(uris), 1)).map_batches(
        score_shards, fn_kwargs={"strategy": cfg.strategy, "seed": cfg.seed}, batch_size=1, batch_format="pyarrow"
    )
    counts = {"pairs_scored": 0, "excluded": 0}
    best: list[dict] = []
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=4096):
        for row in batch.to_pylist():
            counts["pairs_scored"] += 1
            if row["id"] in excluded:
                counts["excluded"] += 1
                continue
            best.append(row)
        if len(best) > 2 * keep:
            best = sorted(best, key=lambda r: (-r["score"], r["id"]))[:keep]
    return sorted(best, key=lambda r: (-r["score"], r["id"]))[:keep], counts


def read_selected_pairs(uri: str, ids: set[str]) -> dict[str, dict]:
    """The pairs (question, passage) of `ids`, streamed from the label run's input."""
    from qadist.squad.io import validate_pair

    found: dict[str, dict] = {}
    for _, _, raw in iter_raw_rows(uri, "the label run's --pairs"):
        if isinstance(raw, dict) and str(raw.get("id")) in ids:
            pair, _ = validate_pair(raw)
            if pair is not None:
                found[pair["id"]] = pair
    return found


def drop_near_duplicates(
    candidates: list[dict], pairs: dict[str, dict], budget: int, cfg: SelectConfig
) -> tuple[list[dict], list[dict]]:
    """Greedy down the ranking: a question closer than `similarity` (cosine) to one already kept is dropped."""
    from qadist.encoder import Encoder

    emb = Encoder(cfg.encoder).embed([pairs[c["id"]]["question"] for c in candidates])
    kept: list[int] = []
    dropped: list[dict] = []
    for i, c in enumerate(candidates):
        if len(kept) == budget:
            break
        sims = emb[kept] @ emb[i] if kept else np.zeros(0)
        if len(sims) and sims.max() >= cfg.similarity:
            twin = candidates[kept[int(sims.argmax())]]["id"]
            dropped.append({"id": c["id"], "near_duplicate_of": twin, "cosine": round(float(sims.max()), 4)})
            continue
        kept.append(i)
    return [candidates[i] for i in kept], dropped


def selected_rows(chosen: list[dict], pairs: dict[str, dict], strategy: str) -> list[dict]:
    rows = []
    for rank, c in enumerate(chosen, start=1):
        pair = pairs[c["id"]]
        text = pair["context"][c["start"] : c["end"]] if c["start"] >= 0 else ""
        rows.append(
            {
                "rank": rank,
                "id": c["id"],
                "question": pair["question"],
                **{k: pair[k] for k in ("title", "doc_id", "question_id") if pair.get(k) is not None},
                "score": round(c["score"], 6),
                "strategy": strategy,
                "reason": c["reason"],
                "prediction": {
                    "text": text,
                    "start": c["start"],
                    "end": c["end"],
                    "no_answer_probability": round(c["no_answer_probability"], 6),
                },
            }
        )
    return rows


jsonl = jsonl_bytes  # selected.jsonl and the tasks: the one JSONL writer


def run_select(cfg: SelectConfig) -> dict[str, Any]:
    manifest = read_manifest(cfg.labels, cfg.generation)
    check_strategy(manifest, cfg)
    labelled = (manifest.get("counts") or {}).get("pairs_labeled", 0)
    if not labelled:
        raise UserError(f"{cfg.labels}: the label table holds no labelled pairs; label some pairs first")
    settings = {k: v for k, v in to_dict(cfg).items() if k != "overwrite"}
    claim(
        cfg.out,
        claim_file("select"),
        settings,
        what="a selection",
        fix="give another --out, or --overwrite",
        overwrite=cfg.overwrite,
        parts=(*OUTPUTS, "_manifest.json"),
    )
    excluded = read_exclude(cfg.exclude) if cfg.exclude else set()
    keep = cfg.budget * (4 if cfg.diversity else 1)
    candidates, counts = top_candidates(cfg, manifest, keep, excluded)
    pool = counts["pairs_scored"] - counts["excluded"]
    if pool < cfg.budget:
        raise UserError(
            f"--budget {cfg.budget} is more than the {pool:,} pairs left to choose from in {cfg.labels} "
            f"({counts['pairs_scored']:,} labelled, {counts['excluded']:,} excluded); give --budget {pool} or less"
        )
    pairs_uri = manifest["config"]["pairs"]
    pairs = read_selected_pairs(pairs_uri, {c["id"] for c in candidates})
    lost = [c["id"] for c in candidates if c["id"] not in pairs]
    if lost:
        raise UserError(
            f"{pairs_uri}: {len(lost)} labelled pairs are no longer in the label run's input (first: {lost[0]!r}); "
            "select from labels whose pairs are still where the label run read them"
        )
    dropped: list[dict] = []
    if cfg.diversity:
        candidates, dropped = drop_near_duplicates(candidates, pairs, cfg.budget, cfg)
    chosen = candidates[: cfg.budget]
    rows = selected_rows(chosen, pairs, cfg.strategy)
    storage.write_bytes(storage.join(cfg.out, "selected.jsonl"), jsonl(rows))
    tasks = [task(pairs[r["id"]], r) for r in rows]
    storage.write_bytes(
        storage.join(cfg.out, "label_studio_tasks.json"),
        json.dumps(tasks, indent=1, ensure_ascii=False).encode("utf-8"),
    )
    storage.write_bytes(storage.join(cfg.out, "label_studio_config.xml"), LABEL_CONFIG.encode("utf-8"))
    if dropped:
        storage.write_bytes(storage.join(cfg.out, "near_duplicates.jsonl"), jsonl(dropped))
    counts.update({"near_duplicates_dropped": len(dropped), "selected": len(rows)})
    if len(rows) < cfg.budget:
        log.warning(
            "--diversity left %d of --budget %d pairs (the rest were near-duplicates of those picked)",
            len(rows),
            cfg.budget,
        )
    result = {
        "stage": "select",
        "config": to_dict(cfg),
        "labels_fingerprint": manifest.get("fingerprint"),
        "counts": counts,
    }
    storage.write_bytes(manifest_uri(cfg.out), json.dumps(result, indent=2).encode("utf-8"))
    answered = sum(1 for r in rows if r["prediction"]["start"] >= 0)
    console.summary(
        f"qadist select: {len(rows):,} of {pool:,} pairs by {cfg.strategy} "
        f"({counts['pairs_scored']:,} scored, {counts['excluded']:,} excluded, {len(dropped):,} near-duplicates "
        f"dropped); {answered} pre-filled with an answer, {len(rows) - answered} with 'No answer' -> {cfg.out}",
        log,
    )
    return result
