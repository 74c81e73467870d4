"""DistillationLoss: the KL term against a hand computation, T^2 scaling, masking, gold-only CE."""

from __future__ import annotations

import math

import pytest
import torch

from qadist.train.losses import DistillationLoss


def softmax(xs: list[float], t: float = 1.0) -> list[float]:
    m = max(x / t for x in xs)
    e = [math.exp(x / t - m) for x in xs]
    return [v / sum(e) for v in e]


def hand_kl(teacher: list[float], student: list[float], t: float) -> float:
    p, q = softmax(teacher, t), softmax(student, t)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_kl_term_equals_a_hand_computation():
    t = 2.0
    s_start, s_end = [0.3, -1.2, 2.0, 0.5], [1.0, 0.0, -0.5, 0.7]
    t_start, t_end = [1.5, 0.2, -0.3, 2.5], [-1.0, 2.0, 0.1, 0.4]
    loss = DistillationLoss(temperature=t, alpha_kd=1.0)(
        torch.tensor([s_start]),
        torch.tensor([s_end]),
        torch.ones(1, 4, dtype=torch.bool),
        torch.tensor([t_start]),
        torch.tensor([t_end]),
    )
    expected = t * t * (hand_kl(t_start, s_start, t) + hand_kl(t_end, s_end, t)) / 2
    assert loss.loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.kd.item() == pytest.approx(expected, rel=1e-5)


def test_kl_ignores_padding_and_matches_the_unpadded_window():
    # A window of 3 real positions padded to 5: the same loss as the unpadded window.
    s, te = [0.1, 0.9, -0.4], [1.0, -1.0, 0.5]
    fn = DistillationLoss(temperature=1.5)
    padded = fn(
        torch.tensor([s + [7.0, -3.0]]),
        torch.tensor([s + [9.0, 9.0]]),
        torch.tensor([[1, 1, 1, 0, 0]]),
        torch.tensor([te + [5.0, 5.0]]),
        torch.tensor([te + [-8.0, 0.0]]),
    )
    plain = fn(
        torch.tensor([s]), torch.tensor([s]), torch.ones(1, 3, dtype=torch.bool), torch.tensor([te]), torch.tensor([te])
    )
    assert padded.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
    assert padded.loss.item() == pytest.approx(1.5**2 * hand_kl(te, s, 1.5), rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_t_squared_scaling(t):
    torch.manual_seed(0)
    s, te, mask = torch.randn(3, 6), torch.randn(3, 6), torch.ones(3, 6, dtype=torch.bool)
    loss = DistillationLoss(temperature=t)(s, s, mask, te, te).loss.item()
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(s / t, -1), torch.log_softmax(te / t, -1), log_target=True, reduction="batchmean"
    )
    assert loss == pytest.approx(t * t * kl.item(), rel=1e-5)
    # And alpha_kd multiplies the term.
    assert DistillationLoss(temperature=t, alpha_kd=0.25)(s, s, mask, te, te).loss.item() == pytest.approx(
        0.25 * loss, rel=1e-6
    )


def test_padded_positions_get_zero_gradient():
    torch.manual_seed(1)
    s_start = torch.randn(2, 6, requires_grad=True)
    s_end = torch.randn(2, 6, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    out = DistillationLoss(temperature=2.0, alpha_kd=1.0, alpha_hard=1.0)(
        s_start,
        s_end,
        mask,
        torch.randn(2, 6),
        torch.randn(2, 6),
        gold_start=torch.tensor([2, 1]),
        gold_end=torch.tensor([3, 1]),
    )
    out.loss.backward()
    for grad in (s_start.grad, s_end.grad):
        assert torch.all(grad[~mask] == 0)
        assert torch.all(grad[mask] != 0)


def test_all_masked_batch_gives_zero_loss_and_finite_zero_gradient():
    s_start = torch.randn(3, 5, requires_grad=True)
    s_end = torch.randn(3, 5, requires_grad=True)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    out = DistillationLoss(temperature=0.5, alpha_kd=1.0, alpha_hard=1.0)(
        s_start,
        s_end,
        mask,
        torch.randn(3, 5),
        torch.randn(3, 5),
        gold_start=torch.tensor([0, 2, -1]),
        gold_end=torch.tensor([0, 3, -1]),
    )
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.n_kd == 0 and out.n_hard == 0
    assert torch.isfinite(s_start.grad).all() and torch.all(s_start.grad == 0)
    assert torch.isfinite(s_end.grad).all() and torch.all(s_end.grad == 0)


def test_hard_term_only_where_gold_exists():
    torch.manual_seed(2)
    s_start, s_end = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
    mask = torch.ones(3, 4, dtype=torch.bool)
    gold_start, gold_end = torch.tensor([2, -1, 0]), torch.tensor([3, -1, 0])
    out = DistillationLoss(alpha_kd=0.0, alpha_hard=1.0)(s_start, s_end, mask, gold_start=gold_start, gold_end=gold_end)
    log_s, log_e = torch.log_softmax(s_start, -1), torch.log_softmax(s_end, -1)
    # Windows 0 and 2 have gold (2 is [CLS] = no answer, still a label); window 1 has none.
    expected = -((log_s[0, 2] + log_e[0, 3]) / 2 + (log_s[2, 0] + log_e[2, 0]) / 2) / 2
    assert out.n_hard == 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    assert torch.all(s_start.grad[1] == 0) and torch.any(s_start.grad[0] != 0)


def test_kd_only_on_windows_with_teacher_logits_and_group_normalisers():
    torch.manual_seed(3)
    s, te, mask = torch.randn(4, 5), torch.randn(4, 5), torch.ones(4, 5, dtype=torch.bool)
    has_teacher = torch.tensor([True, False, True, False])
    fn = DistillationLoss(temperature=1.0)
    out = fn(s, s, mask, te, te, has_teacher=has_teacher)
    both = fn(s[[0, 2]], s[[0, 2]], mask[:2], te[[0, 2]], te[[0, 2]])
    assert out.n_kd == 2 and out.loss.item() == pytest.approx(both.loss.item(), rel=1e-6)
    # An explicit normaliser (the accumulation group's count) replaces the batch's own.
    assert fn(s, s, mask, te, te, has_teacher=has_teacher, n_kd=8).loss.item() == pytest.approx(
        both.loss.item() / 4, rel=1e-6
    )


def test_kd_and_hard_combine_with_their_weights():
    torch.manual_seed(4)
    s, te, mask = torch.randn(2, 5), torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool)
    gs, ge = torch.tensor([1, -1]), torch.tensor([2, -1])
    kd = DistillationLoss(temperature=3.0, alpha_kd=1.0, alpha_hard=0.0)(
        s, s, mask, te, te, gold_start=gs, gold_end=ge
    ).loss
    hard = DistillationLoss(temperature=3.0, alpha_kd=0.0, alpha_hard=1.0)(
        s, s, mask, te, te, gold_start=gs, gold_end=ge
    ).loss
    both = DistillationLoss(temperature=3.0, alpha_kd=0.7, alpha_hard=0.3)(
        s, s, mask, te, te, gold_start=gs, gold_end=ge
    ).loss
    assert both.item() == pytest.approx(0.7 * kd.item() + 0.3 * hard.item(), rel=1e-6)


def test_identical_student_and_teacher_give_zero_kd():
    x = torch.randn(2, 7)
    out = DistillationLoss(temperature=2.0)(x, x, torch.ones(2, 7, dtype=torch.bool), x.clone(), x.clone())
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)


def test_half_precision_teacher_logits_are_accepted():
    s, te = torch.randn(2, 5), torch.randn(2, 5).half()
    out = DistillationLoss()(s, s, torch.ones(2, 5, dtype=torch.bool), te, te)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
