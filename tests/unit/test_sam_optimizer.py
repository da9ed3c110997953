"""``lit_bar.optim.SAM`` in a plain PyTorch loop, against hand-written SAM/ASAM (docs/algorithms.md §2, §5).

Every expected value comes from a few lines of plain torch in this file (``torch.optim`` is used
only as the base optimizer, which SAM wraps and does not re-implement).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch

from lit_bar.optim import SAM, sam_perturbation

DTYPE = torch.float64
BASES = {
    "sgd_momentum": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 1e-2}),
}


def make_params(seed: int = 0) -> list[torch.Tensor]:
    """A two-layer net's weights: two matrices and a bias, so ASAM's T = |w| and T = I both occur.

    Args:
        seed: Seed of the initial values.

    Returns:
        Fresh leaf tensors ``[w1 (5×3), b1 (5,), w2 (1×5)]`` that require grad.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (5,), (1, 5)]
    return [torch.randn(*shape, generator=gen, dtype=DTYPE).requires_grad_() for shape in shapes]


def make_batches(n: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` fixed regression batches ``(inputs 8×3, targets 8×1)``."""
    gen = torch.Generator().manual_seed(123)
    return [
        (torch.randn(8, 3, generator=gen, dtype=DTYPE), torch.randn(8, 1, generator=gen, dtype=DTYPE))
        for _ in range(n)
    ]


def loss_fn(params: list[torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean squared error of ``tanh(x w1ᵀ + b1) w2ᵀ`` against the targets."""
    w1, b1, w2 = params
    inputs, targets = batch
    return (torch.tanh(inputs @ w1.T + b1) @ w2.T - targets).pow(2).mean()


def reference_sam(
    params: list[torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    rho: float,
    adaptive: bool,
    make_base: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
) -> list[torch.Tensor]:
    """SAM/ASAM written out (Alg. 1): ε = ρ T²g/‖Tg‖, descend with ∇L(w + ε) from w itself.

    Args:
        params: Initial weights (not modified).
        batches: One batch per step; both passes of a step use the same batch.
        rho: Radius ρ.
        adaptive: ``True`` for ASAM (T = |w| on tensors with ndim ≥ 2, T = I on 1-D ones).
        make_base: Builds the base optimizer over the weights.

    Returns:
        The weights after one step per batch.
    """
    w = [p.detach().clone().requires_grad_() for p in params]
    base = make_base(w)
    for batch in batches:
        grads = torch.autograd.grad(loss_fn(w, batch), w)
        scales = [p.detach().abs() if adaptive and p.ndim >= 2 else torch.ones_like(p) for p in w]
        norm = torch.sqrt(sum(((t * g) ** 2).sum() for t, g in zip(scales, grads, strict=True)))
        perturbed = [
            (p + rho * t * t * g / norm).detach().requires_grad_()
            for p, t, g in zip(w, scales, grads, strict=True)
        ]
        for p, g in zip(w, torch.autograd.grad(loss_fn(perturbed, batch), perturbed), strict=True):
            p.grad = g
        base.step()
    return [p.detach() for p in w]


@pytest.mark.parametrize("base_name", sorted(BASES))
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("api", ["two_steps", "closure"])
def test_sam_matches_hand_written_loop(base_name: str, adaptive: bool, api: str) -> None:
    base_cls, kwargs = BASES[base_name]
    rho = 0.5 if adaptive else 0.05
    batches = make_batches(5)
    expected = reference_sam(make_params(), batches, rho, adaptive, lambda w: base_cls(w, **kwargs))

    params = make_params()
    opt = SAM(params, base_cls, rho=rho, adaptive=adaptive, **kwargs)
    calls = 0
    for batch in batches:
        if api == "two_steps":
            loss_fn(params, batch).backward()
            opt.first_step(zero_grad=True)
            loss_fn(params, batch).backward()
            opt.second_step(zero_grad=True)
        else:

            def closure(batch: tuple[torch.Tensor, torch.Tensor] = batch) -> torch.Tensor:
                nonlocal calls
                calls += 1
                opt.zero_grad()
                loss = loss_fn(params, batch)
                loss.backward()
                return loss

            opt.step(closure)
    if api == "closure":
        assert calls == 2 * len(batches)
    for got, want in zip(params, expected, strict=True):
        torch.testing.assert_close(got.detach(), want, atol=1e-6, rtol=0)
    assert not torch.equal(params[0].detach(), make_params()[0].detach())  # the loop did move the weights


def test_closure_is_called_twice_and_the_loss_at_w_is_returned() -> None:
    params = make_params()
    batch = make_batches(1)[0]
    opt = SAM(params, torch.optim.SGD, rho=0.1, lr=0.1)
    losses = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(params, batch)
        loss.backward()
        losses.append(loss.detach())
        return loss

    with torch.no_grad():
        loss_at_w = loss_fn(params, batch)
    returned = opt.step(closure)
    assert len(losses) == 2
    assert torch.equal(returned.detach(), loss_at_w)
    assert losses[1] > losses[0]  # the second call ran at w + ε, uphill


def test_gradient_norm_runs_over_all_param_groups_together() -> None:
    """ε_i = ρ_i g_i / ‖g‖ with ‖g‖ over both groups (Alg. 1), each group with its own ρ."""
    w_a = torch.tensor([3.0, 4.0], dtype=DTYPE, requires_grad=True)
    w_b = torch.tensor([[1.0, -2.0]], dtype=DTYPE, requires_grad=True)
    g_a, g_b = torch.tensor([0.3, -0.4], dtype=DTYPE), torch.tensor([[1.2, 0.0]], dtype=DTYPE)
    opt = SAM([{"params": [w_a], "rho": 0.1}, {"params": [w_b], "rho": 0.2}], torch.optim.SGD, lr=0.1)
    before = [w_a.detach().clone(), w_b.detach().clone()]
    w_a.grad, w_b.grad = g_a.clone(), g_b.clone()
    opt.first_step()
    norm = torch.sqrt(g_a.pow(2).sum() + g_b.pow(2).sum())  # = 1.3
    torch.testing.assert_close(w_a.detach() - before[0], 0.1 * g_a / norm, atol=1e-12, rtol=0)
    torch.testing.assert_close(w_b.detach() - before[1], 0.2 * g_b / norm, atol=1e-12, rtol=0)


def test_weights_are_restored_bitwise_from_a_saved_copy() -> None:
    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(64, generator=gen) * torch.logspace(-3, 3, 64)).requires_grad_()
    grad = torch.randn(64, generator=gen)
    before = w.detach().clone()
    eps = 1.0 * grad / grad.norm()
    # Sensitivity guard: subtracting ε after adding it would not give w back in float32.
    assert not torch.equal((before + eps) - eps, before)

    opt = SAM([w], torch.optim.SGD, rho=1.0, lr=0.0)
    w.grad = grad.clone()
    opt.first_step(zero_grad=True)
    assert not torch.equal(w.detach(), before)
    w.grad = torch.randn(64, generator=gen)
    opt.second_step(zero_grad=True)
    assert torch.equal(w.detach(), before)
    assert "w" not in opt.state[w]  # the saved copy is released after the step


def test_zero_gradient_gives_no_perturbation_and_no_nan() -> None:
    params = make_params()
    before = [p.detach().clone() for p in params]
    opt = SAM(params, torch.optim.SGD, rho=0.1, adaptive=False, lr=0.1)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.first_step()
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)
    eps = sam_perturbation(params, [torch.zeros_like(p) for p in params], rho=0.5, adaptive=True)
    assert all(torch.equal(e, torch.zeros_like(e)) for e in eps)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_gradient_gives_no_perturbation_and_no_nan_after_restore(bad: float) -> None:
    w = torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE, requires_grad=True)
    before = w.detach().clone()
    opt = SAM([w], torch.optim.SGD, rho=0.1, lr=0.1)
    w.grad = torch.tensor([bad, 1.0, -1.0], dtype=DTYPE)
    opt.first_step(zero_grad=True)
    assert torch.equal(w.detach(), before)  # ε = 0
    descent = torch.tensor([0.5, 0.5, 0.5], dtype=DTYPE)
    w.grad = descent.clone()
    opt.second_step()
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.detach(), before - 0.1 * descent, atol=1e-12, rtol=0)


def test_lr_scheduler_on_sam_drives_the_base_optimizer() -> None:
    w = torch.tensor([1.0, 2.0], dtype=DTYPE, requires_grad=True)
    opt = SAM([w], torch.optim.SGD, rho=0.0, lr=0.1)
    assert opt.param_groups is opt.base_optimizer.param_groups
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    grad = torch.tensor([1.0, -1.0], dtype=DTYPE)
    expected = w.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for step in range(3):
            w.grad = grad.clone()
            opt.first_step()
            w.grad = grad.clone()
            opt.second_step()
            expected -= 0.1 * 0.5**step * grad  # ρ = 0: plain SGD with the scheduled lr
            scheduler.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    torch.testing.assert_close(w.detach(), expected, atol=1e-12, rtol=0)


def run_steps(opt: SAM, params: list[torch.Tensor], batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Run one two-pass SAM step per batch.

    Args:
        opt: The SAM optimizer over ``params``.
        params: The weights.
        batches: One batch per step.
    """
    for batch in batches:
        loss_fn(params, batch).backward()
        opt.first_step(zero_grad=True)
        loss_fn(params, batch).backward()
        opt.second_step(zero_grad=True)


def test_state_dict_round_trip_reproduces_the_next_steps() -> None:
    batches = make_batches(5)
    params = make_params()
    opt = SAM(params, torch.optim.AdamW, rho=0.05, precondition="adam", lr=1e-2)
    run_steps(opt, params, batches[:2])
    state = copy.deepcopy(opt.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in params]

    fresh = SAM(resumed, torch.optim.AdamW, rho=0.05, precondition="adam", lr=1e-2)
    fresh.load_state_dict(state)
    assert fresh.param_groups is fresh.base_optimizer.param_groups
    run_steps(opt, params, batches[2:])
    run_steps(fresh, resumed, batches[2:])
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a.detach(), b.detach())


def adam_preconditioned_by_hand(opt: torch.optim.Adam, w: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """P·g with P = 1/(√v̂ + ε_adam), v̂ = v / (1 − β₂^t) read from Adam's state (§5).

    Args:
        opt: The Adam optimizer that holds ``w``.
        w: A parameter Adam has stepped.
        grad: The gradient to precondition.

    Returns:
        The preconditioned gradient.
    """
    group = opt.param_groups[0]
    state = opt.state[w]
    v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
    t = float(state["step"])
    v_hat = v / (1 - group["betas"][1] ** t)
    return grad / (v_hat.sqrt() + group["eps"])


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_preconditioned_perturbation_has_radius_rho_along_pg(amsgrad: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4, 3, generator=gen, dtype=DTYPE).requires_grad_()
    rho = 0.2
    opt = SAM([w], torch.optim.Adam, rho=rho, precondition="adam", lr=1e-2, eps=0.1, amsgrad=amsgrad)
    scales = torch.logspace(-2, 1, 12, dtype=DTYPE).reshape(4, 3)  # spread v̂ over decades
    for _ in range(3):
        w.grad = torch.randn(4, 3, generator=gen, dtype=DTYPE) * scales
        opt.base_optimizer.step()
    grad = torch.randn(4, 3, generator=gen, dtype=DTYPE)
    before = w.detach().clone()
    w.grad = grad.clone()
    opt.first_step()
    eps = w.detach() - before
    pg = adam_preconditioned_by_hand(opt.base_optimizer, w, grad)
    torch.testing.assert_close(eps.norm(), torch.tensor(rho, dtype=DTYPE), atol=1e-10, rtol=0)
    torch.testing.assert_close(eps, rho * pg / pg.norm(), atol=1e-10, rtol=0)
    plain = rho * grad / grad.norm()
    assert (eps - plain).abs().max() > 1e-3  # preconditioning changed the direction


def test_adam_preconditioned_perturbation_before_the_first_step_is_plain_sam() -> None:
    w = torch.tensor([[3.0, 0.0], [0.0, -4.0]], dtype=DTYPE, requires_grad=True)
    opt = SAM([w], torch.optim.AdamW, rho=0.5, precondition="adam", lr=1e-2)
    grad = torch.tensor([[0.6, 0.0], [0.0, 0.8]], dtype=DTYPE)
    before = w.detach().clone()
    w.grad = grad.clone()
    opt.first_step()
    torch.testing.assert_close(w.detach() - before, 0.5 * grad / grad.norm(), atol=1e-12, rtol=0)


def test_asam_leaves_one_dimensional_tensors_unscaled() -> None:
    bias = torch.tensor([10.0, -0.1, 2.0], dtype=DTYPE)
    grad = torch.tensor([1.0, 2.0, -2.0], dtype=DTYPE)
    (eps,) = sam_perturbation([bias], [grad], rho=0.3, adaptive=True)
    torch.testing.assert_close(eps, 0.3 * grad / 3.0, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_optimizer": torch.optim.SGD, "rho": -0.1, "lr": 0.1}, "rho must be"),
        ({"base_optimizer": torch.optim.SGD, "rho": float("nan"), "lr": 0.1}, "rho must be"),
        ({"base_optimizer": torch.optim.SGD, "precondition": "shampoo", "lr": 0.1}, "unknown preconditioner"),
        (
            {"base_optimizer": torch.optim.SGD, "precondition": "adam", "lr": 0.1},
            "reads Adam's second moment",
        ),
        ({"base_optimizer": torch.optim.AdamW, "adaptive": True, "precondition": "adam"}, "exclusive"),
    ],
    ids=[
        "negative_rho",
        "nan_rho",
        "unknown_precondition",
        "adam_precondition_on_sgd",
        "adaptive_and_precondition",
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SAM(make_params(), **kwargs)


def test_negative_rho_in_a_param_group_raises() -> None:
    with pytest.raises(ValueError, match="rho must be"):
        SAM([{"params": make_params(), "rho": -1.0}], torch.optim.SGD, lr=0.1)


def test_step_without_closure_raises() -> None:
    opt = SAM(make_params(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()


def test_state_dict_of_a_plain_base_optimizer_loads_into_sam():
    """A checkpoint of the bare base optimizer (no rho/adaptive keys) resumes under SAM."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    base.step()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    sam.load_state_dict(base.state_dict())
    assert all(group["rho"] == 0.2 and group["adaptive"] is False for group in sam.param_groups)
    model(torch.randn(4, 3)).sum().backward()
    sam.first_step(zero_grad=True)  # raised KeyError('rho') before
    model(torch.randn(4, 3)).sum().backward()
    sam.second_step()
