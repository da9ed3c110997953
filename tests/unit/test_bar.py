"""nBAR / oBAR signs, the decoupled BAR update and the μ schedule, against hand computation (§3)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_bar.algorithms.bar import apply_bar, bar_signs, mu_at
from lit_bar.algorithms.pairs import FactorPair

DTYPE = torch.float64


def two_pairs() -> list[FactorPair]:
    """Two pairs built so that nBAR and oBAR pick opposite branches, and the two pairs differ.

    Pair ``p0``: ‖x‖ < ‖y‖ and ‖g_x‖ < ‖g_y‖, so nBAR gives s = +1 and oBAR s = −1.
    Pair ``p1``: ‖x‖ > ‖y‖ and ‖g_x‖ > ‖g_y‖, so nBAR gives s = −1 and oBAR s = +1.

    Returns:
        The pairs, with ``.grad`` set on every factor.
    """
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape: int, scale: float) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=gen, dtype=DTYPE)).requires_grad_()

    x0, y0 = leaf(2, 3, scale=0.1), leaf(4, 2, scale=2.0)
    x1, y1 = leaf(2, 5, scale=3.0), leaf(3, 2, scale=0.2)
    x0.grad, y0.grad = (
        0.01 * torch.randn(2, 3, generator=gen, dtype=DTYPE),
        torch.randn(4, 2, generator=gen, dtype=DTYPE),
    )
    x1.grad, y1.grad = (
        torch.randn(2, 5, generator=gen, dtype=DTYPE),
        0.01 * torch.randn(3, 2, generator=gen, dtype=DTYPE),
    )
    return [FactorPair("p0", x0, y0), FactorPair("p1", x1, y1)]


def hand_sign(mode: str, pair: FactorPair) -> float:
    """Alg. 2 (nBAR): +1 if ‖g_x‖ < ‖g_y‖; Alg. 3 (oBAR): +1 if ‖x‖ > ‖y‖; else −1."""
    if mode == "nbar":
        return 1.0 if pair.x.grad.norm() < pair.y.grad.norm() else -1.0
    return 1.0 if pair.x.detach().norm() > pair.y.detach().norm() else -1.0


@pytest.mark.parametrize(("mode", "expected"), [("nbar", [1.0, -1.0]), ("obar", [-1.0, 1.0])])
def test_signs_follow_the_branch_rule_per_pair(mode: str, expected: list[float]) -> None:
    pairs = two_pairs()
    assert [hand_sign(mode, p) for p in pairs] == expected  # the fixture really has both branches
    assert bar_signs(mode, pairs).tolist() == expected


@pytest.mark.parametrize("mode", ["nbar", "obar"])
def test_apply_bar_scales_x_down_and_y_up_by_eta_mu_s(mode: str) -> None:
    pairs = two_pairs()
    lrs, mu = [0.1, 0.02], 0.5
    before = [(p.x.detach().clone(), p.y.detach().clone()) for p in pairs]
    signs = [hand_sign(mode, p) for p in pairs]
    coeff = apply_bar(pairs, bar_signs(mode, pairs), lrs, mu)
    for pair, (x, y), lr, s in zip(pairs, before, lrs, signs, strict=True):
        torch.testing.assert_close(pair.x.detach(), x * (1 - lr * mu * s), atol=1e-9, rtol=0)
        torch.testing.assert_close(pair.y.detach(), y * (1 + lr * mu * s), atol=1e-9, rtol=0)
    expected = torch.tensor([lr * mu * s for lr, s in zip(lrs, signs, strict=True)], dtype=DTYPE)
    torch.testing.assert_close(coeff, expected)


def test_a_step_with_plus_sign_lowers_balancedness() -> None:
    """s = +1 is a descent step on (μ/2)(‖x‖² − ‖y‖²): B = ½(‖x‖² − ‖y‖²) falls."""
    pairs = two_pairs()
    hand_b = [0.5 * (p.x.detach().pow(2).sum() - p.y.detach().pow(2).sum()) for p in pairs]
    apply_bar(pairs, torch.tensor([1.0, 1.0]), 0.1, 1.0)
    for pair, b in zip(pairs, hand_b, strict=True):
        assert 0.5 * (pair.x.detach().pow(2).sum() - pair.y.detach().pow(2).sum()) < b


def test_one_learning_rate_for_all_pairs() -> None:
    pairs = two_pairs()
    before = [(p.x.detach().clone(), p.y.detach().clone()) for p in pairs]
    apply_bar(pairs, torch.tensor([1.0, -1.0]), 0.1, 2.0)
    for pair, (x, y), s in zip(pairs, before, [1.0, -1.0], strict=True):
        torch.testing.assert_close(pair.x.detach(), x * (1 - 0.2 * s), atol=1e-9, rtol=0)
        torch.testing.assert_close(pair.y.detach(), y * (1 + 0.2 * s), atol=1e-9, rtol=0)


def test_keep_zero_leaves_every_factor_unchanged() -> None:
    pairs = two_pairs()
    before = [(p.x.detach().clone(), p.y.detach().clone()) for p in pairs]
    coeff = apply_bar(pairs, bar_signs("nbar", pairs), [0.1, 0.1], 1.0, keep=torch.tensor(0.0))
    assert coeff.tolist() == [0.0, 0.0]
    for pair, (x, y) in zip(pairs, before, strict=True):
        assert torch.equal(pair.x.detach(), x)
        assert torch.equal(pair.y.detach(), y)
    apply_bar(pairs, bar_signs("nbar", pairs), [0.1, 0.1], 1.0, keep=torch.tensor(1.0))
    assert not torch.equal(pairs[0].x.detach(), before[0][0])  # keep=1 does apply


@pytest.mark.parametrize("mode", ["nbar", "obar"])
def test_a_pair_without_gradient_is_untouched(mode: str) -> None:
    pairs = two_pairs()
    pairs[1].y.grad = None
    before = [(p.x.detach().clone(), p.y.detach().clone()) for p in pairs]
    coeff = apply_bar(pairs, bar_signs(mode, pairs), [0.1, 0.1], 1.0)
    assert coeff[1] == 0
    assert torch.equal(pairs[1].x.detach(), before[1][0])
    assert torch.equal(pairs[1].y.detach(), before[1][1])
    s0 = hand_sign(mode, pairs[0])
    torch.testing.assert_close(pairs[0].x.detach(), before[0][0] * (1 - 0.1 * s0), atol=1e-9, rtol=0)


@pytest.mark.parametrize("mode", ["nbar", "obar"])
def test_ties_take_the_minus_branch(mode: str) -> None:
    """Equal norms are not "<" (nBAR) nor ">" (oBAR), so s = −1."""
    x = torch.ones(2, 2, requires_grad=True)
    y = torch.ones(4, requires_grad=True)
    x.grad, y.grad = torch.ones(2, 2), torch.ones(4)
    assert bar_signs(mode, [FactorPair("tie", x, y)]).tolist() == [-1.0]


@pytest.mark.parametrize(
    ("schedule", "h"),
    [
        ("constant", lambda r: 1.0),
        ("linear", lambda r: 1.0 - r),
        ("cosine", lambda r: 0.5 * (1.0 + math.cos(math.pi * r))),
    ],
)
def test_mu_schedule_at_known_steps(schedule: str, h) -> None:
    """μ_t = μ₀ h(t/T); past T the decaying schedules stay at h(1) = 0."""
    mu0, total = 2.0, 100
    for step in (0, 25, 50, 100):
        assert mu_at(mu0, step, total, schedule) == pytest.approx(mu0 * h(step / total), abs=1e-12)
    assert mu_at(mu0, 250, total, schedule) == pytest.approx(mu0 * h(1.0), abs=1e-12)


def test_mu_schedule_spot_values() -> None:
    assert mu_at(1.0, 50, 100, "linear") == pytest.approx(0.5)
    assert mu_at(1.0, 50, 100, "cosine") == pytest.approx(0.5)
    assert mu_at(1.0, 100, 100, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert mu_at(0.3, 10**6, 0, "constant") == 0.3  # constant needs no T


def test_unknown_mode_raises() -> None:
    with pytest.raises(ValueError, match="unknown BAR mode 'xbar'"):
        bar_signs("xbar", two_pairs())


def test_unknown_schedule_raises() -> None:
    with pytest.raises(ValueError, match="unknown μ schedule 'step'"):
        mu_at(1.0, 0, 10, "step")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decaying_schedule_without_total_steps_raises(schedule: str) -> None:
    with pytest.raises(ValueError, match="needs total_steps > 0"):
        mu_at(1.0, 0, 0, schedule)


def test_bar_signs_of_no_pairs_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one FactorPair"):
        bar_signs("nbar", [])
