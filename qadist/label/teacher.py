"""The teacher ensemble: a callable class for Ray Data actors (load in `__init__`, label in `__call__`).

Every teacher of the ensemble lives on each actor, so one batch of windows goes through all of
them without moving data between actors. Windows are run in length-sorted batches padded only to
the batch's longest window (`qadist.inference.run_windows`), with bf16/fp16 autocast on GPU and
fp32 on CPU. Logits are combined per window over its real positions only:

- `mean_logits` (default): the mean of the teachers' logits;
- `mean_probs`: the log of the mean of the teachers' softmax probabilities (a log-distribution,
  so a student's softmax over it gives back the averaged probabilities).

Each mode is one entry of `COMBINES` (name -> [n_teachers, length] logits -> [length]); every mode
reads only the teachers' logits of a window. `LabelConfig.combine` takes exactly its keys (checked
by a test). Stored as float16, cut to the window's real length; per-teacher logits on request.

Teachers may use different tokenizers: the windows are the first teacher's, and the others read
the pairs through their own windows and are projected onto those (`qadist.label.mixed_tokenizers`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from qadist.errors import UserError
from qadist.inference import fit_windows, length_sorted_batches, pick_device, place
from qadist.label.mixed_tokenizers import carry_over, other_windows, teacher_rows_column, tokenizer_groups
from qadist.shards import list_array, nested_values

log = logging.getLogger(__name__)


def mean_logits(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0)


def mean_probs(x: np.ndarray) -> np.ndarray:
    # log(mean_t softmax(x_t)) = logsumexp_t(x_t - logsumexp(x_t)) - log(n), computed stably.
    top = x.max(axis=1, keepdims=True)
    log_probs = x - (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))
    peak = log_probs.max(axis=0)
    return (peak + np.log(np.exp(log_probs - peak).mean(axis=0))).astype(np.float32)


# The combine modes: [n_teachers, length] float32 logits of one window -> [length] float32.
COMBINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mean_logits": mean_logits, "mean_probs": mean_probs}


def combine_logits(per_teacher: np.ndarray, how: str = "mean_logits") -> np.ndarray:
    """[n_teachers, length] float logits of one window -> [length] float32 combined logits."""
    if how not in COMBINES:
        raise ValueError(f"combine must be one of {tuple(COMBINES)}, not {how!r}")
    return COMBINES[how](np.asarray(per_teacher, dtype=np.float32))


def padded_tokens(lengths: Sequence[int], batch_size: int) -> int:
    """Token positions actually computed by `run_windows`: each batch padded to its longest window."""
    lengths = np.asarray(lengths)
    return int(sum(len(idx) * int(lengths[idx].max()) for idx in length_sorted_batches(lengths, batch_size)))


def _rows_of(batch: Any, name: str) -> list:
    """A column as Python values; a mixed-tokenizer ensemble needs the pair's id, offsets and text."""
    values = _column_values(batch, name)
    if values is None:
        raise KeyError(f"teachers of different tokenizers need a {name!r} column (schema 2 windows have it)")
    return values


def _column_values(batch: Any, name: str) -> list | None:
    if isinstance(batch, pa.Table):
        return batch[name].to_pylist() if name in batch.column_names else None
    values = batch.get(name) if hasattr(batch, "get") else None
    return None if values is None else list(values)


def _column(batch: Any, name: str) -> list | None:
    if isinstance(batch, pa.Table):
        if name not in batch.column_names:
            return None
        from qadist.shards import list_values

        return list_values(batch[name])
    values = batch.get(name) if hasattr(batch, "get") else None
    return None if values is None else list(values)


class TeacherEnsemble:
    """Callable for `Dataset.map_batches`: windows in, the ensemble's soft labels out.

    `__call__` takes a batch of windows (a pyarrow Table or a dict of columns with `input_ids` and,
    when the tokenizer makes them, `token_type_ids`) and returns it with `start_logits` and
    `end_logits` added (float16 arrays of each window's real length; with `keep_teacher_logits`
    also `teacher_start_logits`/`teacher_end_logits`, one row per teacher). Every other column
    (`id`, `window`, ...) is passed through untouched: a Table comes back as a Table with the
    contract's Arrow types, a dict as a dict of lists of numpy arrays.

    With teachers of more than one tokenizer the batch also needs `id`, `offsets` and `context`
    (schema 2 windows have them); `others` gives each further tokenizer group's windows of the
    batch's pairs (`other_windows`, cut in the CPU stage), else they are cut here.
    """

    def __init__(
        self,
        teachers: Sequence[str],
        revisions: Sequence[str | None] | None = None,
        combine: str = "mean_logits",
        keep_teacher_logits: bool = False,
        batch_size: int = 64,
        use_gpu: bool | None = False,
        num_threads: int | None = None,
        precision: str = "auto",
        trust_remote_code: bool = False,
        lengths: Sequence[int] = (384, 128, 64),
    ):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch

        from qadist.models import load_qa_model, load_tokenizer, tokenizer_fingerprint

        if combine not in COMBINES:
            raise UserError(f"combine={combine!r}: use one of {', '.join(COMBINES)}")
        if not teachers:
            raise UserError("no teachers given; pass --teacher NAME|PATH at least once")
        revisions = list(revisions) if revisions else [None] * len(teachers)
        self.names = list(teachers)
        tokenizers = [load_tokenizer(t, trust_remote_code) for t in self.names]
        self.groups = tokenizer_groups([tokenizer_fingerprint(t) for t in tokenizers])
        self.tokenizers = [tokenizers[g[0]] for g in self.groups]
        self.pad_ids = [t.pad_token_id if t.pad_token_id is not None else 0 for t in self.tokenizers]
        self.lengths = tuple(lengths)
        self.device = pick_device(use_gpu)
        if self.device.type == "cpu" and num_threads:
            torch.set_num_threads(int(num_threads))
        self.models = [
            place(load_qa_model(name, None if rev in (None, "local") else rev, trust_remote_code), use_gpu)[0]
            for name, rev in zip(self.names, revisions)
        ]
        self.combine = combine
        self.keep_teacher_logits = keep_teacher_logits
        self.batch_size = batch_size
        self.precision = precision
        log.info(
            "teacher ensemble of %d on %s: %s (%d tokenizer(s))",
            len(self.models),
            self.device,
            ", ".join(self.names),
            len(self.groups),
        )

    def logits(
        self, input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None, group: int = 0
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per window: (start, end) float32 arrays [n teachers of the tokenizer group, real length]."""
        runs = []
        for t in self.groups[group]:
            # A batch size that ran out of GPU memory stays down for this actor's later blocks.
            windows, self.batch_size = fit_windows(
                self.models[t], input_ids, token_type_ids, self.pad_ids[group], self.batch_size, self.device,
                self.precision,
            )  # fmt: skip
            runs.append(windows)
        return [(np.stack([r[i][0] for r in runs]), np.stack([r[i][1] for r in runs])) for i in range(len(input_ids))]

    def group_logits(
        self, batch: pa.Table | dict[str, Any], others: Sequence[pa.Table] | None = None
    ) -> tuple[list[list[tuple[np.ndarray, np.ndarray]]], list[pa.Table]]:
        """Each tokenizer group's teachers on that group's windows (group 0: the batch's; the others:
        `others`, cut here from the batch's text when not given): per group, per window (start, end)
        float32 [teachers of the group, real length]; and the other groups' windows."""
        input_ids = _column(batch, "input_ids")
        if input_ids is None:
            raise KeyError(
                "TeacherEnsemble needs an 'input_ids' column of windows (see qadist.squad.features.make_windows)"
            )
        first = self.logits(input_ids, _column(batch, "token_type_ids")) if len(input_ids) else []
        if len(self.groups) == 1:
            return [first], []
        if others is None:
            ids, questions, contexts = (_rows_of(batch, k) for k in ("id", "question", "context"))
            pairs = [
                {"id": i, "question": q, "context": c} for i, (q, c) in dict(zip(ids, zip(questions, contexts))).items()
            ]
            others = [other_windows(pairs, tok, self.lengths) for tok in self.tokenizers[1:]]
        per_group = [first] + [
            self.logits(_column(t, "input_ids"), _column(t, "token_type_ids"), g) if t.num_rows else []
            for g, t in enumerate(others, start=1)
        ]
        return per_group, list(others)

    def ensemble_logits(
        self, batch: pa.Table | dict[str, Any], others: Sequence[pa.Table] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per window of the batch: (start, end) [n_teachers, real length], rows in teacher order."""
        per_group, others = self.group_logits(batch, others)
        if len(per_group) == 1 or not per_group[0]:
            return per_group[0]
        return carry_over(self.groups, per_group, others, *target_windows(batch))

    def __call__(
        self, batch: pa.Table | dict[str, Any], others: Sequence[pa.Table] | None = None
    ) -> pa.Table | dict[str, Any]:
        return with_labels(batch, self.ensemble_logits(batch, others), self.combine, self.keep_teacher_logits)


def target_windows(batch: pa.Table | dict[str, Any]) -> tuple[list[str], list, dict[str, str]]:
    """The windows other tokenizers' teachers are carried onto: ids, offsets, and each pair's context."""
    ids, contexts = _rows_of(batch, "id"), _rows_of(batch, "context")
    offsets = nested_values(batch["offsets"], 2) if isinstance(batch, pa.Table) else _rows_of(batch, "offsets")
    return ids, offsets, dict(zip(ids, contexts))


def with_labels(
    batch: pa.Table | dict[str, Any], per_window: list[tuple[np.ndarray, np.ndarray]], combine: str, keep: bool
) -> pa.Table | dict[str, Any]:
    """The batch with `start_logits`/`end_logits` (the combine of each window's teacher rows, float16)
    and, with `keep`, the rows themselves; a Table gets the contract's Arrow types and column order."""
    start = [combine_logits(s, combine).astype(np.float16) for s, _ in per_window]
    end = [combine_logits(e, combine).astype(np.float16) for _, e in per_window]
    if not isinstance(batch, pa.Table):
        out = dict(batch)
        out["start_logits"], out["end_logits"] = start, end
        if keep:
            out["teacher_start_logits"] = [s.astype(np.float16) for s, _ in per_window]
            out["teacher_end_logits"] = [e.astype(np.float16) for _, e in per_window]
        return out
    at = batch.column_names.index("offsets") + 1 if "offsets" in batch.column_names else batch.num_columns
    table = batch.add_column(at, "start_logits", list_array(start)).add_column(at + 1, "end_logits", list_array(end))
    if keep:
        table = table.append_column("teacher_start_logits", teacher_rows_column([s for s, _ in per_window]))
        table = table.append_column("teacher_end_logits", teacher_rows_column([e for _, e in per_window]))
    return table
