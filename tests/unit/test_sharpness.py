"""lit_bar.sharpness against closed forms on quadratics, a full Hessian, and what it must leave alone.

The quadratic L_b(w) = ½ wᵀHw + g_bᵀw (one g_b per "batch") has ∇L_b(w + ε) = ∇_b + Hε with
∇_b = Hw + g_b, so L_b(w + ε) − L_b(w) = ∇_bᵀε + ½ εᵀHε: SAM's ε̂ = ρ∇_b/‖∇_b‖ gives ρ‖∇_b‖ + ½ρ² ûᵀHû,
the exact maximum over the ball solves the trust-region equations (bisection below, in numpy),
the sphere average is ρ² tr(H) / (2d), and the top eigenvalue is H's.
"""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
import torch

from lit_bar.callbacks.sharpness import SharpnessMonitor, fixed_batches
from lit_bar.sharpness import (
    average_sharpness,
    hessian_top_eigenvalue,
    measure_sharpness,
    worst_case_sharpness,
)

EIGENVALUES = [4.0, 1.5, 1.0, 0.5, -0.5, -1.0]


def _quadratic(eigenvalues: list[float], batches: int = 3, seed: int = 0):
    """(H, w, [g_b], loss_fn) in float64; w and the g_b random."""
    gen = torch.Generator().manual_seed(seed)
    d = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    h = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    w = torch.randn(d, generator=gen, dtype=torch.float64).requires_grad_()
    gs = [torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(batches)]

    def loss_fn(g: torch.Tensor) -> torch.Tensor:
        return 0.5 * w @ h @ w + g @ w

    return h, w, gs, loss_fn


def _exact_max(h: np.ndarray, grad: np.ndarray, rho: float) -> float:
    """max_{‖ε‖≤ρ} gradᵀε + ½εᵀHε: ε = (λI − H)⁻¹grad with λ > λ_max(H) and ‖ε‖ = ρ (bisection on λ)."""
    e, q = np.linalg.eigh(h)
    c = q.T @ grad
    lo, hi = e.max() + 1e-12, e.max() + np.linalg.norm(grad) / rho + abs(e).max() + 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.linalg.norm(c / (mid - e)) > rho else (lo, mid)
    eps = c / ((lo + hi) / 2 - e)
    return float(c @ eps + 0.5 * (e * eps**2).sum())


def test_one_ascent_step_is_sams_estimate() -> None:
    h, w, gs, loss_fn = _quadratic(EIGENVALUES)
    rho = 0.3
    expected = []
    for g in gs:  # ρ‖∇‖ + ½ρ² ∇ᵀH∇/‖∇‖², by hand
        grad = (h @ w + g).detach()
        expected.append(rho * grad.norm().item() + 0.5 * rho**2 * (grad @ h @ grad / (grad @ grad)).item())
    estimate = worst_case_sharpness(loss_fn, [w], gs, rho=rho, steps=1)
    assert estimate.value == pytest.approx(statistics.mean(expected), rel=1e-10)
    assert estimate.spread == pytest.approx(statistics.stdev(expected) / math.sqrt(3), rel=1e-8)
    assert estimate.samples == 3
    # the per-batch maximum, not one ascent over the batches' mean loss
    grad = (h @ w + torch.stack(gs).mean(0)).detach()
    pooled = rho * grad.norm().item() + 0.5 * rho**2 * (grad @ h @ grad / (grad @ grad)).item()
    assert abs(pooled - estimate.value) > 1e-3


def test_many_ascent_steps_reach_the_exact_maximum_on_the_ball() -> None:
    h, w, gs, loss_fn = _quadratic(EIGENVALUES)
    rho = 1.5  # large enough that curvature turns the maximiser away from the gradient
    exact = statistics.mean(_exact_max(h.numpy(), (h @ w + g).detach().numpy(), rho) for g in gs)
    converged = worst_case_sharpness(loss_fn, [w], gs, rho=rho, steps=300).value
    one_step = worst_case_sharpness(loss_fn, [w], gs, rho=rho, steps=1).value
    assert converged == pytest.approx(exact, rel=1e-6)
    assert exact - one_step > 1e-2  # SAM's one step is a strictly lower estimate here
    for steps in (1, 2, 5):  # every iterate is feasible: never above the maximum
        assert worst_case_sharpness(loss_fn, [w], gs, rho=rho, steps=steps).value <= exact + 1e-12


def test_worst_case_at_a_minimum_of_a_flat_direction_only_quadratic() -> None:
    """∇ = 0 gives no ascent direction: ε stays 0 (documented), and nothing is NaN."""
    h, _, _, _ = _quadratic([2.0, 1.0])
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    estimate = worst_case_sharpness(lambda _: 0.5 * w @ h @ w, [w], [None, None], rho=0.1, steps=3)
    assert estimate.value == 0.0 and estimate.spread == 0.0


def test_average_sharpness_of_an_isotropic_quadratic_is_exact() -> None:
    """H = cI: every antithetic pair gives ½cρ² exactly, whatever the gradient (its term cancels)."""
    c, rho, d = 3.0, 0.2, 5
    _, w, gs, _ = _quadratic([c] * d, batches=2)
    h = c * torch.eye(d, dtype=torch.float64)

    def loss_fn(g: torch.Tensor) -> torch.Tensor:
        return 0.5 * w @ h @ w + g @ w

    estimate = average_sharpness(loss_fn, [w], gs, rho=rho, directions=16)
    assert estimate.value == pytest.approx(rho**2 * c * d / (2 * d), rel=1e-6)  # ρ² tr(H) / (2d)
    assert estimate.spread < 1e-8 and estimate.samples == 16


def test_average_sharpness_matches_the_trace_in_expectation() -> None:
    h, w, gs, loss_fn = _quadratic(EIGENVALUES, batches=2)
    rho, d = 0.5, len(EIGENVALUES)
    expected = rho**2 * torch.trace(h).item() / (2 * d)
    estimate = average_sharpness(loss_fn, [w], gs, rho=rho, directions=3000, seed=1)
    assert abs(estimate.value - expected) < 4 * estimate.spread
    assert estimate.spread < 0.1 * expected  # tight enough to tell the wrong answers apart:
    for wrong in (0.5 * rho**2 * max(EIGENVALUES), rho**2 * torch.trace(h).item() / 2, 0.0):
        assert abs(estimate.value - wrong) > 10 * estimate.spread
    # each pair is ½δᵀHδ exactly, so within ½ρ²[λ_min, λ_max]; the seed changes the directions
    other = average_sharpness(loss_fn, [w], gs, rho=rho, directions=3, seed=2)
    assert other.value != average_sharpness(loss_fn, [w], gs, rho=rho, directions=3, seed=1).value
    assert 0.5 * rho**2 * min(EIGENVALUES) <= other.value <= 0.5 * rho**2 * max(EIGENVALUES)


@pytest.mark.parametrize(
    ("eigenvalues", "shifted"), [(EIGENVALUES, False), ([-5.0, 2.0, 1.0, 0.3], True), ([-5.0, -1.0], True)]
)
def test_power_iteration_finds_the_largest_eigenvalue(eigenvalues: list[float], shifted: bool) -> None:
    """λ_max, also where a negative eigenvalue dominates in magnitude (plain power iteration gives −5)."""
    _, w, gs, loss_fn = _quadratic(eigenvalues)
    estimate = hessian_top_eigenvalue(loss_fn, [w], gs, iterations=300, tolerance=1e-12)
    assert estimate.value == pytest.approx(max(eigenvalues), rel=1e-8)
    assert estimate.spread <= 1e-11 * abs(estimate.value)
    assert estimate.samples < (600 if shifted else 300)  # stopped on the tolerance


def test_power_iteration_matches_the_full_hessian_of_a_small_network() -> None:
    """A tanh network over several tensors and batches, against torch's dense Hessian of the mean loss."""
    gen = torch.Generator().manual_seed(2)
    shapes = [(5, 4), (5,), (2, 5)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]
    batches = [
        (torch.randn(8, 4, generator=gen, dtype=torch.float64), torch.randint(0, 2, (8,), generator=gen))
    ]
    batches.append(
        (torch.randn(8, 4, generator=gen, dtype=torch.float64), torch.randint(0, 2, (8,), generator=gen))
    )

    def net_loss(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, batch) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(torch.tanh(x @ a.T + b) @ c.T, y)

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        parts, i = [], 0
        for p in params:
            parts.append(flat[i : i + p.numel()].view_as(p))
            i += p.numel()
        return sum(net_loss(*parts, batch) for batch in batches) / len(batches)

    flat = torch.cat([p.detach().flatten() for p in params])
    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(flat_loss, flat))
    order = eigenvalues.abs().sort(descending=True).values
    assert order[1] / order[0] < 0.5  # a gap: power iteration converges in the iterations given
    top = eigenvalues.max().item()
    estimate = hessian_top_eigenvalue(
        lambda batch: net_loss(*params, batch), params, batches, iterations=200, tolerance=1e-13
    )
    assert estimate.value == pytest.approx(top, rel=1e-6)
    assert abs(top) > 0.05  # not a vacuous zero


def test_spread_is_nan_where_undefined() -> None:
    _, w, gs, loss_fn = _quadratic(EIGENVALUES, batches=1)
    assert math.isnan(worst_case_sharpness(loss_fn, [w], gs).spread)
    assert math.isnan(average_sharpness(loss_fn, [w], gs, directions=1).spread)
    assert math.isnan(hessian_top_eigenvalue(loss_fn, [w], gs, iterations=1).spread)


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(4, 8)
        self.drop = torch.nn.Dropout(0.5)
        self.second = torch.nn.Linear(8, 1)
        self.frozen = torch.nn.Linear(1, 1).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(self.second(self.drop(torch.tanh(self.first(x)))))


def test_weights_rng_modes_and_grads_are_left_as_they_were() -> None:
    torch.manual_seed(0)
    net = _Net().train()
    net.second.eval()  # a submodule kept in eval mode by the user stays so
    batches = [torch.randn(6, 4) for _ in range(2)]
    seen_modes = []

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        seen_modes.append(net.drop.training)
        torch.rand(3)  # a consumer of the global generator
        return net(x).pow(2).mean()

    params = [p for p in net.parameters() if p.requires_grad]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    expected_next = torch.rand(5)
    torch.set_rng_state(rng)
    modes = {name: m.training for name, m in net.named_modules()}
    results = measure_sharpness(
        loss_fn, params, batches, rho=0.5, ascent_steps=3, directions=2, iterations=4, module=net
    )
    assert set(results) == {"worst", "average", "hessian_top"}
    assert seen_modes and not any(seen_modes)  # measured in eval mode: dropout off
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # bitwise
    assert torch.equal(torch.rand(5), expected_next)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert all(p.grad is None for p in net.parameters())


def test_weights_are_restored_after_an_error_in_the_loss() -> None:
    net = _Net()
    before = [p.clone() for p in net.parameters()]
    calls = []

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:  # at w + ε
            raise RuntimeError("boom")
        return net(x).pow(2).mean()

    params = [p for p in net.parameters() if p.requires_grad]
    with pytest.raises(RuntimeError, match="boom"):
        worst_case_sharpness(loss_fn, params, [torch.randn(3, 4)], rho=1.0, module=net.train())
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
    assert net.training


def test_works_inside_inference_mode() -> None:
    """Lightning runs the test loop under torch.inference_mode(); the measurement turns gradients back on."""
    _, w, gs, loss_fn = _quadratic(EIGENVALUES)
    outside = measure_sharpness(loss_fn, [w], gs, directions=2, iterations=3)
    with torch.inference_mode():
        inside = measure_sharpness(loss_fn, [w], gs, directions=2, iterations=3)
    assert inside == outside


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": 0.0}, "rho must be a finite number > 0, got 0.0"),
        ({"rho": float("nan")}, "rho must be a finite number > 0, got nan"),
        ({"ascent_steps": 0}, "steps must be an int >= 1, got 0"),
        ({"directions": 0}, "directions must be an int >= 1, got 0"),
        ({"iterations": 0}, "iterations must be an int >= 1, got 0"),
        ({"tolerance": -1.0}, "tolerance must be a number >= 0, got -1.0"),
        ({"measures": ["sharp"]}, "unknown or no sharpness measures \\['sharp'\\]"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    _, w, gs, loss_fn = _quadratic(EIGENVALUES)
    with pytest.raises(ValueError, match=message):
        measure_sharpness(loss_fn, [w], gs, **kwargs)


def test_bad_inputs_are_refused() -> None:
    _, w, gs, loss_fn = _quadratic(EIGENVALUES)
    with pytest.raises(ValueError, match="batches is empty"):
        worst_case_sharpness(loss_fn, [w], [])
    with pytest.raises(ValueError, match="params is empty"):
        worst_case_sharpness(loss_fn, [], gs)
    with pytest.raises(ValueError, match=r"params\[0\] .* requires_grad=True"):
        worst_case_sharpness(loss_fn, [w.detach()], gs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_batches": 0}, "num_batches must be an int >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be an int >= 1 or None, got 0"),
        ({"pooled_batches": 0}, "pooled_batches must be an int >= 1 or None, got 0"),
        ({"rho": -0.1}, "rho must be a finite number > 0, got -0.1"),
        ({"average_rho": 0}, "average_rho must be a finite number > 0, got 0"),
        ({"measures": []}, "measures must be a non-empty list"),
        ({"measures": ["worst", "flat"]}, "got \\['worst', 'flat'\\]"),
        ({"power_iterations": 1.5}, "power_iterations must be an int >= 1, got 1.5"),
        ({"in_test": "yes"}, "in_test must be True or False, got 'yes'"),
    ],
)
def test_monitor_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SharpnessMonitor(**kwargs)


def test_fixed_batches_are_the_same_rows_whatever_the_global_generators() -> None:
    data = list(range(50))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    torch.manual_seed(1), random.seed(1)
    first = fixed_batches(loader, 3, None, seed=5)
    torch.manual_seed(2), random.seed(2)
    second = fixed_batches(loader, 3, None, seed=5)
    assert [b.tolist() for b in first] == [b.tolist() for b in second]
    assert [len(b) for b in first] == [8, 8, 8]
    rows = torch.cat(first).tolist()
    assert len(set(rows)) == 24 and rows != list(range(24))  # distinct rows, not simply the first ones
    assert torch.cat(fixed_batches(loader, 3, None, seed=6)).tolist() != rows
    assert [len(b) for b in fixed_batches(loader, 2, 5, seed=5)] == [5, 5]


def test_fixed_batches_of_a_small_training_set_warn() -> None:
    loader = torch.utils.data.DataLoader(list(range(5)), batch_size=8)
    with pytest.warns(UserWarning, match="5 rows, enough for 1 batch"):
        batches = fixed_batches(loader, 4, None, seed=0)
    assert sorted(batches[0].tolist()) == [0, 1, 2, 3, 4]
