"""Cross-tokenizer soft labels (DESIGN.md): teacher start/end distributions carried through characters.

One module for both users, below the stages: the label stage carries teachers of another tokenizer
onto the stored windows (`qadist.label.mixed_tokenizers`), distillation carries the soft labels onto
a student's windows (`qadist.train.cross_tokenizer`).

Per pair, for the start and the end distribution separately:

    char_mass        each teacher window: softmax(logits / T) -> (no-answer mass, mass per context character)
    combine_windows  all teacher windows of the pair -> one (no-answer, per-character) distribution
    student_targets  each student window -> a distribution over the student's positions (sums to 1)
    log_targets      probabilities -> "teacher logits" for `DistillationLoss` at the same T

Offsets are `make_windows`' (`qadist.squad.features`): [start, end) character spans in the
context, [-1, -1] for question, special and padding tokens; index 0 is [CLS] (`<s>`) = no answer.
Characters are the common ground of two tokenizers: a start is "the answer begins at this
character", an end "the answer's last character is this one". Pure numpy; float64 inside.

The rule that gives a character to a student token is `gold_positions`' rule for gold labels, so
a projected peak lands where a gold label would: a start character goes to the first context token
that ends after it, an end character to the last context token that starts at or before it. A
character inside a token thus goes to that token; one between tokens (a space that trimmed offsets
leave out) goes to the next token for a start, the previous one for an end, so nothing assumes
that offsets do or do not include a leading space (byte-level BPE with or without trim_offsets).
Tokens that share characters (SentencePiece's lone "▁" before punctuation spans the same
character as the punctuation) are told apart by nothing but their order: a start on either goes
to the first, an end to the last. With the same tokenizer the projection is therefore the
identity on windows whose tokens share no character, and the identity up to that merge otherwise.

Known limit: start and end are projected independently (the teacher gives marginals, not a joint
distribution), so a student window that cuts an answer can keep its start mass while the end mass
outside the window moves to [CLS].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Kind = Literal["start", "end"]
Rule = Literal["mean", "max_context"]


def _offsets(offsets: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    return np.asarray(offsets, dtype=np.int64).reshape(-1, 2)


def _context_tokens(off: np.ndarray) -> np.ndarray:
    """Indices of context tokens ([L, 2] offsets -> [n] int); index 0 is [CLS] whatever its offsets."""
    idx = np.flatnonzero(off[:, 0] >= 0)
    return idx[idx > 0]


def window_span(offsets: Sequence[Sequence[int]] | np.ndarray) -> tuple[int, int]:
    """[lo, hi): the characters a window covers, from its first context token's start to its last one's
    end (spaces between its tokens included); (0, 0) for a window without context tokens."""
    off = _offsets(offsets)
    idx = _context_tokens(off)
    return (int(off[idx, 0].min()), int(off[idx, 1].max())) if idx.size else (0, 0)


def char_mass(
    logits: Sequence[float] | np.ndarray,
    offsets: Sequence[Sequence[int]] | np.ndarray,
    context_len: int,
    kind: Kind,
    temperature: float = 1.0,
) -> tuple[float, np.ndarray]:
    """One teacher window's start (or end) logits [L] and offsets [L, 2] -> (no_answer, mass [context_len]).

    The distribution is softmax(logits / temperature) over [CLS] and the context tokens, i.e. the
    mass of the other real positions (question tokens, [SEP]) is dropped and the rest renormalised:
    they can never be an answer (postprocessing ignores them too), and renormalising keeps the odds
    between the positions that can. `no_answer` is [CLS]'s share; each context token's mass goes to
    its first character (`kind="start"`: offset start) or its last (`kind="end"`: offset end - 1;
    the start for an empty token, such as byte-level BPE's trimmed lone "Ġ").
    no_answer + mass.sum() == 1. These are probabilities at the KD temperature T, not logits:
    project at the T of the loss, so that the student's softmax(logits / T) is compared with the
    teacher's softmax(logits / T), and turn the targets back with `log_targets(p, T)`.
    """
    off = _offsets(offsets)
    z = np.asarray(logits, dtype=np.float64) / temperature
    if z.shape != (len(off),) or len(off) == 0:
        raise ValueError(f"logits have shape {z.shape}, offsets {off.shape}: one logit per token expected")
    idx = _context_tokens(off)
    if idx.size and (off[idx, 0].min() < 0 or off[idx, 1].max() > context_len):
        raise ValueError(f"offsets reach past the context (length {context_len})")
    keep = np.concatenate([[0], idx])
    p = np.exp(z[keep] - z[keep].max())
    p /= p.sum()
    chars = off[idx, 0] if kind == "start" else np.maximum(off[idx, 1] - 1, off[idx, 0])
    mass = np.zeros(context_len, dtype=np.float64)
    np.add.at(mass, np.minimum(chars, max(context_len - 1, 0)), p[1:])
    return float(p[0]), mass


def combine_windows(
    masses: Sequence[tuple[float, np.ndarray]], spans: Sequence[tuple[int, int]], rule: Rule = "mean"
) -> tuple[float, np.ndarray]:
    """Every teacher window's `char_mass` (W of them, same kind) and `window_span` -> one (no_answer, q [C]).

    q(c), the pair's mass at character c, comes from the windows that cover c (span lo <= c < hi):
      - "mean": the average of their masses at c. With windows that agree (each window's mass at
        its own characters is the pair's, and its no-answer mass is the pair's plus the pair's mass
        outside the window, as SQuAD-style training labels a window without the answer) this gives
        the pair's distribution back exactly.
      - "max_context": the mass of the window in which c is farthest from an edge (the BERT SQuAD
        "max context" rule; first window on ties). Better where windows disagree: a window that
        holds only part of an answer was trained to say [CLS], and "mean" would halve that
        answer's mass; the window that holds it whole, with more context around it, wins here.
    no_answer = 1 - q.sum(). For "mean" this is exactly the average over the windows of
    (window no-answer mass - the part of q outside the window): a window's [CLS] mass also means
    "the answer is elsewhere", which the other windows account for; a plain average of [CLS]
    masses would label a pair answered with certainty in one of two windows half unanswerable.
    Where windows disagree so much that q.sum() > 1, q is scaled to sum to 1 and no_answer is 0.
    Characters no window covers get 0.
    """
    if not masses:
        raise ValueError("no teacher windows to combine")
    if rule not in ("mean", "max_context"):
        raise ValueError(f"unknown rule {rule!r}; use 'mean' or 'max_context'")
    n_chars = len(masses[0][1])
    q, acc = np.zeros(n_chars), np.zeros(n_chars)  # mean: sum and count; max_context: mass and best score
    for (_, mass), (lo, hi) in zip(masses, spans):
        window = np.asarray(mass, dtype=np.float64)[lo:hi]
        if rule == "mean":
            q[lo:hi] += window
            acc[lo:hi] += 1
        else:
            score = np.minimum(np.arange(hi - lo), np.arange(hi - lo)[::-1]) + 1.0
            better = score > acc[lo:hi]
            q[lo:hi][better], acc[lo:hi][better] = window[better], score[better]
    if rule == "mean":
        q /= np.maximum(acc, 1)
    total = q.sum()
    if total > 1.0:
        return 0.0, q / total
    return float(1.0 - total), q


def student_targets(
    no_answer: float, char_mass: np.ndarray, student_offsets: Sequence[Sequence[int]] | np.ndarray, kind: Kind
) -> np.ndarray:
    """A pair's (no_answer, per-character mass [C]) -> one student window's target probabilities [L] float32.

    Each student context token gets the mass of its characters (start: first token ending after
    the character; end: last token starting at or before it; see the module docstring), tokens
    other than [CLS] and the context get 0, and [CLS] gets no_answer plus all the mass outside the
    window's span: like a SQuAD-style gold label, an answer the window does not hold is "no answer
    in this window". The result is divided by no_answer + char_mass.sum() (1 for `combine_windows`
    output), so it sums to 1; if both are 0 the target is [CLS] with certainty. Only the teacher
    windows that overlap this one matter: the others reach it only through [CLS].
    """
    off = _offsets(student_offsets)
    q = np.asarray(char_mass, dtype=np.float64)
    if len(off) == 0:
        raise ValueError("a student window has at least [CLS]")
    target = np.zeros(len(off), dtype=np.float64)
    total = float(no_answer) + q.sum()
    idx = _context_tokens(off)
    s, e = off[idx, 0], off[idx, 1]
    if idx.size and e.max() > len(q):
        raise ValueError(f"student offsets reach past the context (length {len(q)})")
    if total <= 0:
        target[0] = 1.0
        return target.astype(np.float32)
    if idx.size:
        lo, hi = int(s.min()), int(e.max())
        c = np.arange(lo, hi)
        if kind == "start":  # first token whose end is past c
            k = np.searchsorted(np.maximum.accumulate(e), c, side="right")
        else:  # last token whose start is at or before c
            k = np.searchsorted(np.minimum.accumulate(s[::-1])[::-1], c, side="right") - 1
        np.add.at(target, idx[k], q[lo:hi])
    target[0] = max(total - target.sum(), 0.0)
    return (target / target.sum()).astype(np.float32)


def project_pair(
    teacher_windows: Sequence[dict],
    context: str,
    student_windows: Sequence[dict],
    temperature: float = 1.0,
    rule: Rule = "mean",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One pair: teacher windows ({"offsets", "start_logits", "end_logits"}) -> per student window
    ({"offsets"}) its (start_probs [L_s], end_probs [L_s]) float32 targets at `temperature`."""
    # Offsets often arrive as Python lists (Arrow's to_pylist): convert each window once, not per use.
    teacher_windows = [{**w, "offsets": _offsets(w["offsets"])} for w in teacher_windows]
    student_windows = [{"offsets": _offsets(w["offsets"])} for w in student_windows]
    spans = [window_span(w["offsets"]) for w in teacher_windows]
    out: dict[str, list[np.ndarray]] = {}
    for kind in ("start", "end"):
        masses = [
            char_mass(w[f"{kind}_logits"], w["offsets"], len(context), kind, temperature) for w in teacher_windows
        ]
        no_answer, q = combine_windows(masses, spans, rule)
        out[kind] = [student_targets(no_answer, q, w["offsets"], kind) for w in student_windows]
    return list(zip(out["start"], out["end"]))


def log_targets(probs: np.ndarray, temperature: float = 1.0, eps: float = 1e-12) -> np.ndarray:
    """Target probabilities [L] -> "teacher logits" [L] float32 for `DistillationLoss(temperature=T)`.

    Contract: returns T * log(max(p, eps)), so softmax(x / T) == p (up to L * eps, for the zeros
    clamped to eps) and the loss, which divides teacher logits by T, compares the student's
    softmax(s / T) with exactly p. p must itself be the projection at that T (`char_mass(...,
    temperature=T)`): the projection does not commute with the temperature. Padding is masked by
    the loss, so any value may follow the window's real positions.
    """
    return (temperature * np.log(np.maximum(np.asarray(probs, dtype=np.float64), eps))).astype(np.float32)
