"""The teacher ensemble: a callable class for Ray Data actors (load in `__init__`, label in `__call__`).

Every teacher of the ensemble lives on each actor, so one batch of windows goes through all of
them without moving data between actors. Windows are run in length-sorted batches padded only to
the batch's longest window (`qadist.inference.run_windows`), with bf16/fp16 autocast on GPU and
fp32 on CPU. Logits are combined per window over its real positions only:

- `mean_logits` (default): the mean of the teachers' logits;
- `mean_probs`: the log of the mean of the teachers' softmax probabilities (a log-distribution,
  so a student's softmax over it gives back the averaged probabilities).

Stored as float16, cut to the window's real length; per-teacher logits on request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from qadist.errors import UserError
from qadist.inference import length_sorted_batches, pick_device, run_windows

log = logging.getLogger(__name__)
COMBINES = ("mean_logits", "mean_probs")


def combine_logits(per_teacher: np.ndarray, how: str = "mean_logits") -> np.ndarray:
    """[n_teachers, length] float logits of one window -> [length] float32 combined logits."""
    x = np.asarray(per_teacher, dtype=np.float32)
    if how == "mean_logits":
        return x.mean(axis=0)
    if how == "mean_probs":
        # log(mean_t softmax(x_t)) = logsumexp_t(x_t - logsumexp(x_t)) - log(n), computed stably.
        top = x.max(axis=1, keepdims=True)
        log_probs = x - (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))
        peak = log_probs.max(axis=0)
        return (peak + np.log(np.exp(log_probs - peak).mean(axis=0))).astype(np.float32)
    raise ValueError(f"combine must be one of {COMBINES}, not {how!r}")


def padded_tokens(lengths: Sequence[int], batch_size: int) -> int:
    """Token positions actually computed by `run_windows`: each batch padded to its longest window."""
    lengths = np.asarray(lengths)
    return int(sum(len(idx) * int(lengths[idx].max()) for idx in length_sorted_batches(lengths, batch_size)))


def check_shared_tokenizer(names: Sequence[str], fingerprints: Sequence[str]) -> None:
    """An ensemble must share one tokenizer: a mismatch is an error before any work."""
    for name, fp in zip(names[1:], fingerprints[1:]):
        if fp != fingerprints[0]:
            raise UserError(
                f"teachers {names[0]} and {name} use different tokenizers (vocabulary hash {fingerprints[0]} vs {fp}); "
                "every teacher of an ensemble must share one tokenizer: drop one of them from --teacher"
            )


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
        check_shared_tokenizer(self.names, [tokenizer_fingerprint(t) for t in tokenizers])
        self.pad_id = tokenizers[0].pad_token_id if tokenizers[0].pad_token_id is not None else 0
        self.device = pick_device(use_gpu)
        if self.device.type == "cpu" and num_threads:
            torch.set_num_threads(int(num_threads))
        self.models = [
            load_qa_model(name, None if rev in (None, "local") else rev, trust_remote_code).to(self.device).eval()
            for name, rev in zip(self.names, revisions)
        ]
        self.combine = combine
        self.keep_teacher_logits = keep_teacher_logits
        self.batch_size = batch_size
        self.precision = precision
        log.info("teacher ensemble of %d on %s: %s", len(self.models), self.device, ", ".join(self.names))

    def logits(
        self, input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per window: (start, end) float32 arrays of shape [n_teachers, real length]."""
        runs = [
            run_windows(m, input_ids, token_type_ids, self.pad_id, self.batch_size, self.device, self.precision)
            for m in self.models
        ]
        return [(np.stack([r[i][0] for r in runs]), np.stack([r[i][1] for r in runs])) for i in range(len(input_ids))]

    def __call__(self, batch: pa.Table | dict[str, Any]) -> pa.Table | dict[str, Any]:
        input_ids = _column(batch, "input_ids")
        if input_ids is None:
            raise KeyError(
                "TeacherEnsemble needs an 'input_ids' column of windows (see qadist.squad.features.make_windows)"
            )
        per_window = self.logits(input_ids, _column(batch, "token_type_ids")) if len(input_ids) else []
        start = [combine_logits(s, self.combine).astype(np.float16) for s, _ in per_window]
        end = [combine_logits(e, self.combine).astype(np.float16) for _, e in per_window]
        if isinstance(batch, pa.Table):
            return self._append(batch, start, end, per_window)
        out = dict(batch)
        out["start_logits"], out["end_logits"] = start, end
        if self.keep_teacher_logits:
            out["teacher_start_logits"] = [s.astype(np.float16) for s, _ in per_window]
            out["teacher_end_logits"] = [e.astype(np.float16) for _, e in per_window]
        return out

    def _append(self, table: pa.Table, start: list, end: list, per_window: list) -> pa.Table:
        from qadist.shards import list_array

        at = table.column_names.index("offsets") + 1 if "offsets" in table.column_names else table.num_columns
        table = table.add_column(at, "start_logits", list_array(start)).add_column(
            at + 1, "end_logits", list_array(end)
        )
        if self.keep_teacher_logits:
            n = len(self.models)
            outer = pa.array(np.arange(0, n * len(per_window) + 1, n, dtype=np.int32))
            for name, k in (("teacher_start_logits", 0), ("teacher_end_logits", 1)):
                inner = list_array([row for w in per_window for row in w[k]])
                table = table.append_column(name, pa.ListArray.from_arrays(outer, inner))
        return table
