"""Domain masking for `qadist pretrain --masking domain`: mask the domain's keywords more often.

Random masking spends most of its predictions on words every page shares ("the", "camera", ".").
Domain masking gives each token a masking probability proportional to its smoothed inverse document
frequency over the training sequences (scikit-learn's smooth idf: log((1 + N) / (1 + df)) + 1), so a
model name, a lens mount or a spec value is masked several times as often as a function word, the
way keyword masking for domain adaptation does. The probabilities are scaled so that the expected
share of masked tokens is still `mask_prob`; specials are never masked. transformers' collator then
replaces the chosen tokens as it always does (80% [MASK], 10% random, 10% kept).

No library computes this per-token weighting for a masked-LM collator, so it is written here; the
counting runs in Ray Data tasks, the replacement is transformers'.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

SCALE_ROUNDS = 20  # rescaling after clipping at 1 converges in a few rounds; this bounds it


def token_counts(block: pa.Table) -> pa.Table:
    """A block of sequences (input_ids) -> per token id: occurrences and sequences it occurs in."""
    lists = block["input_ids"].combine_chunks()
    flat = np.asarray(lists.flatten(), dtype=np.int64)
    row = np.repeat(np.arange(len(lists)), np.diff(np.asarray(lists.offsets)))
    tokens, occurrences = np.unique(flat, return_counts=True)
    per_sequence = np.unique(np.stack([row, flat]), axis=1)[1]  # each (sequence, token) once
    in_tokens, in_sequences = np.unique(per_sequence, return_counts=True)
    assert np.array_equal(tokens, in_tokens)
    return pa.table({"token": tokens, "occurrences": occurrences, "sequences": in_sequences})


def domain_mask_probabilities(
    tokens: np.ndarray,
    occurrences: np.ndarray,
    sequences: np.ndarray,
    n_sequences: int,
    vocab_size: int,
    mask_prob: float,
    never: frozenset[int],
) -> np.ndarray:
    """Per token id [vocab_size], float32: the probability it is masked where it occurs.

    Proportional to the smoothed idf, scaled (and clipped at 1, then rescaled) so that the
    occurrence-weighted mean over the maskable tokens is `mask_prob`. A token never seen in
    training gets `mask_prob`; `never` (specials) get 0."""
    idf = np.log((1 + n_sequences) / (1 + sequences.astype(np.float64))) + 1
    maskable = np.array([t not in never for t in tokens.tolist()], dtype=bool)
    weight, count = idf[maskable], occurrences[maskable].astype(np.float64)
    prob = np.zeros_like(weight)
    if count.sum() > 0:
        target = mask_prob * count.sum()
        scale = target / (weight * count).sum()
        for _ in range(SCALE_ROUNDS):
            prob = np.minimum(weight * scale, 1.0)
            expected = (prob * count).sum()
            if abs(expected - target) <= 1e-6 * target:
                break
            free = prob < 1  # scale up the unclipped tokens to make up the clipped ones' share
            scale *= (target - (count[~free]).sum()) / max((prob[free] * count[free]).sum(), 1e-12)
    out = np.full(vocab_size, mask_prob, dtype=np.float32)
    out[tokens[maskable]] = prob
    out[[t for t in never if t < vocab_size]] = 0.0
    return out


def choose_tokens(
    input_ids: torch.Tensor, never_mask: torch.Tensor, probs: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """[B, L] bool: the tokens to mask, each drawn with its token's probability (never where `never_mask`)."""
    p = probs[input_ids].masked_fill(never_mask.bool(), 0.0)
    return torch.bernoulli(p, generator=generator).bool()
