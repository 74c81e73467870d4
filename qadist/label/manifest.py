"""A label generation's manifest: its shards and counts, and the run's throughput summary.

Built from this run's results and the footers of shards an earlier run finished (`read_footer`),
so a resumed run's manifest lists every shard of the generation.
"""

from __future__ import annotations

from qadist import console, storage
from qadist.config import LabelConfig, to_dict
from qadist.label.blocks import Block
from qadist.label.stages import memory_mb
from qadist.shards import read_footer


def first_with_answers(out: str, first: dict, default: bool) -> bool:
    """Whether generation 1's shards carry answers (read from a shard when its manifest predates the key)."""
    if "with_answers" in first:
        return bool(first["with_answers"])
    listed = [s for s in first["shards"] if s["rows"]]
    return "answers" in read_footer(storage.join(out, listed[0]["path"]))[2].names if listed else default


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
        f"{console.rate(tot['pairs_in'], s, 'pair')}, {console.rate(tot['windows'], s, 'window')}, "
        f"{console.rate(tot['real_tokens'], s, 'real token')}, padding {padding:.1%} of "
        f"computed tokens; {len(results)} shards written, {len(skipped)} skipped (finished earlier)"
    )
    if tot["projection_seconds"]:
        run["summary"] += (
            f"; projecting the other tokenizers' teachers took {tot['projection_seconds']:.1f} CPU s in the write "
            f"tasks (the actors: {tot['teacher_seconds']:.1f}s)"
        )
    return run
