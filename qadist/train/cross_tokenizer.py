"""Distilling a student whose tokenizer is not the labels': one soft-label shard -> the student's windows.

Runs where the shards are read (`qadist.shards.read(transform=...)`, Ray Data CPU tasks), once per
distillation (the result is materialised), never on the training step. Per pair of the shard: its
windows are re-cut from the stored `question` and `context` with the student's tokenizer and
window lengths (`make_windows`), and the teacher's start/end distributions of every window of the
pair are carried through characters onto each student window (`qadist.projection`), at the
loss's temperature, and stored back as "logits" that `DistillationLoss` at that temperature turns
into exactly the projected targets (`log_targets`).

A pair the student's tokenizer cannot window is skipped and logged with its id, and the count of
skips travels in the output (`skipped` column, on the shard's first row) so the driver can print it.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import numpy as np
import pyarrow as pa

from qadist.projection import log_targets, project_pair
from qadist.shards import LOGITS_TYPE, list_array, list_values, nested_values
from qadist.squad.features import make_windows

log = logging.getLogger(__name__)

SHARD_COLUMNS = ["id", "window", "offsets", "start_logits", "end_logits", "question", "context"]


@functools.lru_cache(maxsize=2)
def student_tokenizer(name: str, trust_remote_code: bool) -> Any:
    """The student's tokenizer, loaded once per worker; an s3:// student is fetched on this machine."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from qadist.models import load_tokenizer, local_model

    return load_tokenizer(local_model(name), trust_remote_code)


def output_schema(has_types: bool) -> pa.Schema:
    """The training columns (`qadist.train.stage.train_schema`) plus the shard's skip count."""
    return pa.schema(
        [
            ("input_ids", pa.list_(pa.int32())),
            *([("token_type_ids", pa.list_(pa.int8()))] if has_types else []),
            ("start_logits", LOGITS_TYPE),
            ("end_logits", LOGITS_TYPE),
            ("start_position", pa.int32()),
            ("end_position", pa.int32()),
            ("skipped", pa.int32()),
        ]
    )


def teacher_windows(shard: pa.Table) -> dict[str, dict]:
    """A shard's rows grouped by pair, in shard order: id -> {question, context, windows: [...]}."""
    ids = shard["id"].to_pylist()
    offsets = nested_values(shard["offsets"], 2)
    starts, ends = list_values(shard["start_logits"]), list_values(shard["end_logits"])
    questions, contexts = shard["question"].to_pylist(), shard["context"].to_pylist()
    pairs: dict[str, dict] = {}
    for i, pair_id in enumerate(ids):
        pair = pairs.setdefault(pair_id, {"question": questions[i], "context": contexts[i], "windows": []})
        pair["windows"].append({"offsets": offsets[i], "start_logits": starts[i], "end_logits": ends[i]})
    return pairs


def student_windows(
    pairs: dict[str, dict], tokenizer: Any, lengths: dict[str, int]
) -> tuple[dict[str, list], list[str]]:
    """The student's windows of every pair (one call for the shard, per pair only if that fails)."""
    cut = functools.partial(
        make_windows,
        tokenizer=tokenizer,
        max_seq_len=lengths["max_seq_len"],
        doc_stride=lengths["doc_stride"],
        max_query_len=lengths["max_query_len"],
    )
    batch = {
        "id": list(pairs),
        "question": [p["question"] for p in pairs.values()],
        "context": [p["context"] for p in pairs.values()],
    }
    try:
        return cut(batch), []
    except Exception:  # find the pair(s) the tokenizer chokes on instead of losing the shard
        pass
    out: dict[str, list] = {}
    skipped = []
    for pair_id, p in pairs.items():
        try:
            one = cut({"id": [pair_id], "question": [p["question"]], "context": [p["context"]]})
        except Exception as e:
            log.warning("pair %r: the student's tokenizer cannot window it (%s); skipped", pair_id, e)
            skipped.append(pair_id)
            continue
        for k, v in one.items():
            out.setdefault(k, []).extend(v)
    return out, skipped


def project_shard(
    shard: pa.Table, tokenizer_name: str, lengths: dict[str, int], temperature: float, trust_remote_code: bool = False
) -> pa.Table:
    """A soft-label shard (`SHARD_COLUMNS`) -> the student's training windows with projected targets."""
    tokenizer = student_tokenizer(tokenizer_name, trust_remote_code)
    has_types = "token_type_ids" in tokenizer.model_input_names
    schema = output_schema(has_types)
    pairs = teacher_windows(shard)
    if not pairs:
        return schema.empty_table()
    windows, skipped = student_windows(pairs, tokenizer, lengths)
    ids = windows.get("id", [])
    by_pair: dict[str, list[dict]] = {}  # make_windows keeps a pair's windows together, in order
    for pair_id, offsets in zip(ids, windows.get("offsets", [])):
        by_pair.setdefault(pair_id, []).append({"offsets": offsets})
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    for pair_id, mine in by_pair.items():
        pair = pairs[pair_id]
        for s, e in project_pair(pair["windows"], pair["context"], mine, temperature):
            starts.append(log_targets(s, temperature))
            ends.append(log_targets(e, temperature))
    n = len(ids)
    columns = {
        "input_ids": pa.array(windows.get("input_ids", []), type=pa.list_(pa.int32())),
        "start_logits": list_array(starts),
        "end_logits": list_array(ends),
        "start_position": pa.array([-1] * n, type=pa.int32()),  # soft labels only, as from the teachers
        "end_position": pa.array([-1] * n, type=pa.int32()),
        "skipped": pa.array([len(skipped)] + [0] * (n - 1) if n else [], type=pa.int32()),
    }
    if has_types:
        columns["token_type_ids"] = pa.array(
            windows.get("token_type_ids") or [[0] * len(x) for x in windows["input_ids"]], type=pa.list_(pa.int8())
        )
    return pa.table({f.name: columns[f.name] for f in schema}, schema=schema)
