"""The distillation loss of DESIGN.md: soft-label KL at a temperature plus a hard-label CE term.

Per window, softmax over the window's real positions only (padding masked; index 0 = [CLS] = no
answer), temperature T:

    L = a_kd * T^2 * (KL(t_start/T || s_start/T) + KL(t_end/T || s_end/T)) / 2
      + a_hard * (CE(s_start, gold_start) + CE(s_end, gold_end)) / 2

The KL term applies to windows that carry teacher logits, the CE term to windows with a gold
position (>= 0). Each term is averaged over the windows it applies to; the caller may pass the
counts of a whole accumulation group (`n_kd`, `n_hard`) so that k micro-batches make the same
update as one batch k times larger.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

# A finite "minus infinity": masked positions get exp(.) = 0 and every gradient stays finite,
# even for a row with no real position at all (where -inf would give NaN).
NEG = torch.finfo(torch.float32).min


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log_softmax over the real positions of each row; [B, L] float32 -> [B, L] float32.

    Masked positions get a (finite) huge negative value; their gradient is exactly zero.
    """
    return F.log_softmax(logits.float().masked_fill(~mask, NEG), dim=-1)


def kl_per_window(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) per window over real positions: [B, L] -> [B]."""
    log_q = masked_log_softmax(student.float() / temperature, mask)
    log_p = masked_log_softmax(teacher.float() / temperature, mask)
    return torch.where(mask, log_p.exp() * (log_p - log_q), 0.0).sum(-1)


def ce_per_window(student: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-log softmax(student)[gold] per window; [B, L], [B] -> [B] (gold clamped; mask the result)."""
    log_q = masked_log_softmax(student, mask)
    return -log_q.gather(1, gold.clamp(0, student.shape[1] - 1).unsqueeze(1)).squeeze(1)


def real_at(mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """mask[b, positions[b]] with out-of-range positions read as False; [B, L], [B] -> [B] bool."""
    inside = (positions >= 0) & (positions < mask.shape[1])
    return inside & mask.gather(1, positions.clamp(0, mask.shape[1] - 1).unsqueeze(1)).squeeze(1)


@dataclass
class LossOutput:
    """`loss` is what to backpropagate; the rest are detached, for logging."""

    loss: torch.Tensor
    kd: torch.Tensor  # mean KL term (T^2 (KL_start + KL_end) / 2) over this batch's kd windows
    hard: torch.Tensor  # mean CE term over this batch's gold windows
    kd_sum: torch.Tensor  # the KL term summed over this batch's kd windows
    hard_sum: torch.Tensor  # the CE term summed over this batch's gold windows
    kd_count: torch.Tensor | int  # windows counted, on the logits' device: reading them waits for the GPU
    hard_count: torch.Tensor | int

    @property
    def n_kd(self) -> int:
        return int(self.kd_count)

    @property
    def n_hard(self) -> int:
        return int(self.hard_count)


class DistillationLoss(nn.Module):
    """Soft-label KL (with T^2) + hard-label CE over the real positions of each window.

    Shapes (B windows, L = the batch's longest window):
        student_start, student_end: [B, L] float logits of the student.
        mask:                       [B, L] bool (or 0/1), True at the window's real positions.
        teacher_start, teacher_end: [B, L] float logits of the teacher (any value where masked), or None.
        has_teacher:                [B] bool, windows that carry teacher logits (default: all, when given).
        gold_start, gold_end:       [B] long token positions, -1 where the window has no gold label
                                    (0 = [CLS] = no answer in the window).
        n_kd, n_hard:               optional normalisers (e.g. the counts of a whole accumulation group);
                                    default: this batch's counts.
    Returns a `LossOutput` whose `loss` is a scalar; it is 0 (with a zero, NaN-free gradient) when
    no window qualifies for either term.
    """

    def __init__(self, temperature: float = 2.0, alpha_kd: float = 1.0, alpha_hard: float = 0.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.alpha_kd, self.alpha_hard = float(temperature), float(alpha_kd), float(alpha_hard)

    def forward(
        self,
        student_start: torch.Tensor,
        student_end: torch.Tensor,
        mask: torch.Tensor,
        teacher_start: torch.Tensor | None = None,
        teacher_end: torch.Tensor | None = None,
        has_teacher: torch.Tensor | None = None,
        gold_start: torch.Tensor | None = None,
        gold_end: torch.Tensor | None = None,
        n_kd: int | None = None,
        n_hard: int | None = None,
    ) -> LossOutput:
        mask = mask.bool()
        nonempty = mask.any(-1)
        zero = student_start.float().sum() * 0.0  # keeps the graph (and the device) when a term is absent
        kd_sum, kd_count = zero, 0
        if self.alpha_kd > 0 and teacher_start is not None and teacher_end is not None:
            rows = nonempty if has_teacher is None else nonempty & has_teacher.bool()
            t2 = self.temperature**2
            kd = (
                t2
                * (
                    kl_per_window(student_start, teacher_start, mask, self.temperature)
                    + kl_per_window(student_end, teacher_end, mask, self.temperature)
                )
                / 2
            )
            kd_sum, kd_count = torch.where(rows, kd, 0.0).sum(), rows.sum()
        hard_sum, hard_count = zero, 0
        if self.alpha_hard > 0 and gold_start is not None and gold_end is not None:
            # Gold only where the window has one (>= 0), at a real position (never padding).
            rows = real_at(mask, gold_start) & real_at(mask, gold_end)
            hard = (ce_per_window(student_start, gold_start, mask) + ce_per_window(student_end, gold_end, mask)) / 2
            hard_sum, hard_count = torch.where(rows, hard, 0.0).sum(), rows.sum()
        # Counts stay tensors (no host sync per batch); the normalisers are the group's when given.
        kd_norm = max(n_kd, 1) if n_kd is not None else _at_least_one(kd_count)
        hard_norm = max(n_hard, 1) if n_hard is not None else _at_least_one(hard_count)
        loss = self.alpha_kd * kd_sum / kd_norm + self.alpha_hard * hard_sum / hard_norm
        return LossOutput(
            loss=loss,
            kd=(kd_sum / _at_least_one(kd_count)).detach(),
            hard=(hard_sum / _at_least_one(hard_count)).detach(),
            kd_sum=kd_sum.detach(),
            hard_sum=hard_sum.detach(),
            kd_count=kd_count,
            hard_count=hard_count,
        )


def _at_least_one(count: torch.Tensor | int) -> torch.Tensor | int:
    return count.clamp(min=1) if isinstance(count, torch.Tensor) else max(count, 1)
