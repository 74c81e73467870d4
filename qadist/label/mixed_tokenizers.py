"""Ensembles whose teachers use different tokenizers: every teacher's answer carried onto one set of windows.

The shards store the windows of the first teacher's tokenizer (the ensemble's "stored" tokenizer).
A teacher with another tokenizer reads the same pairs through its own windows, cut with its
tokenizer and the run's window lengths in the CPU windowing stage (`other_windows`); after it has
run, its start and end distributions are carried through characters onto the stored windows
(`project_onto`: `qadist.projection` at T = 1, the teacher's windows of a pair combined),
and stored as log-probabilities. The configured combine then treats them as that teacher's
logits: `mean_probs` averages the distributions, `mean_logits` takes their geometric mean (a
position one teacher gives no mass, such as a word-internal token it cannot start an answer on,
is pulled down hard). Teachers that share a tokenizer share windows (`tokenizer_groups`).

What a student distilled at temperature T sees of a projected teacher is softmax(log p / T), the
projection at T = 1 sharpened or flattened afterwards, which differs from projecting at T where
several of the teacher's tokens fall on one stored token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from qadist.projection import log_targets, project_pair
from qadist.shards import list_array, nested_values


def tokenizer_groups(fingerprints: Sequence[str]) -> list[list[int]]:
    """Teacher indices grouped by tokenizer, in order of first appearance: group 0 holds teacher 0."""
    groups: dict[str, list[int]] = {}
    for i, fp in enumerate(fingerprints):
        groups.setdefault(fp, []).append(i)
    return list(groups.values())


def other_windows(pairs: Sequence[dict], tokenizer: Any, lengths: Sequence[int]) -> pa.Table:
    """A teacher tokenizer's windows of `pairs` (`id`, `question`, `context`): id, input_ids, [token_type_ids,]
    offsets. Raises what the tokenizer raises; the windowing stage turns that into the pair's reject."""
    from qadist.squad.features import make_windows

    has_types = "token_type_ids" in tokenizer.model_input_names
    batch = {k: [p[k] for p in pairs] for k in ("id", "question", "context")}
    w = (
        make_windows(batch, tokenizer, *lengths)
        if pairs
        else {"id": [], "input_ids": [], "token_type_ids": [], "offsets": []}
    )
    columns = {
        "id": pa.array(w["id"], pa.string()),
        "input_ids": pa.array(w["input_ids"], pa.list_(pa.int32())),
        **({"token_type_ids": pa.array(w["token_type_ids"], pa.list_(pa.int8()))} if has_types else {}),
        "offsets": pa.array(w["offsets"], pa.list_(pa.list_(pa.int32()))),
    }
    return pa.table(columns)


def project_onto(
    own_ids: Sequence[str],
    own_offsets: Sequence,
    own_logits: Sequence[tuple[np.ndarray, np.ndarray]],
    target_ids: Sequence[str],
    target_offsets: Sequence,
    contexts: dict[str, str],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A tokenizer group's logits on its own windows -> the same teachers' log-probabilities on the target windows.

    own_logits: per own window (start [n_teachers, L_own], end [n_teachers, L_own]); the result: per
    target window, in target order, (start [n_teachers, L], end [n_teachers, L]) float32 log-probabilities
    at T = 1 (`log_targets`: exp of a row sums to 1 up to its zeros clamped to 1e-12). A target pair
    with no window of its own here (the windowing stage rejects such pairs) raises KeyError.
    """
    own: dict[str, list[int]] = {}
    for i, pair_id in enumerate(own_ids):
        own.setdefault(pair_id, []).append(i)
    targets: dict[str, list[int]] = {}
    for j, pair_id in enumerate(target_ids):
        targets.setdefault(pair_id, []).append(j)
    n_teachers = own_logits[0][0].shape[0] if len(own_logits) else 0
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(target_ids)
    for pair_id, js in targets.items():
        mine = [{"offsets": target_offsets[j]} for j in js]
        per_teacher = []
        for t in range(n_teachers):
            windows = [
                {"offsets": own_offsets[i], "start_logits": own_logits[i][0][t], "end_logits": own_logits[i][1][t]}
                for i in own[pair_id]
            ]
            per_teacher.append(project_pair(windows, contexts[pair_id], mine, 1.0))
        for k, j in enumerate(js):
            out[j] = (
                np.stack([log_targets(p[k][0]) for p in per_teacher]),
                np.stack([log_targets(p[k][1]) for p in per_teacher]),
            )
    return out  # type: ignore[return-value]


def carry_over(
    groups: Sequence[Sequence[int]],
    per_group: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]],
    others: Sequence[pa.Table],
    ids: Sequence[str],
    offsets: Sequence,
    contexts: dict[str, str],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every tokenizer group's logits -> per target window (start, end) [n_teachers, L] in teacher order.

    per_group[0] is on the target windows already (the stored tokenizer's teachers: kept as they
    are); per_group[g] is on `others[g - 1]`'s windows and is projected (`project_onto`)."""
    projected = [per_group[0]] + [
        project_onto(t["id"].to_pylist(), nested_values(t["offsets"], 2), own, ids, offsets, contexts)
        for t, own in zip(others, per_group[1:])
    ]
    order = np.argsort([t for g in groups for t in g])  # group-major rows -> teacher order
    return [
        (np.concatenate([g[i][0] for g in projected])[order], np.concatenate([g[i][1] for g in projected])[order])
        for i in range(len(ids))
    ]


def teacher_rows_column(rows: Sequence[np.ndarray], value_type: pa.DataType = pa.float16()) -> pa.ListArray:
    """Per window an array [n_teachers, L] -> list<list<value_type>> (one list per teacher)."""
    n = rows[0].shape[0] if len(rows) else 0
    outer = pa.array(np.arange(0, n * len(rows) + 1, max(n, 1), dtype=np.int32)[: len(rows) + 1])
    return pa.ListArray.from_arrays(outer, list_array([r for w in rows for r in w], value_type))
