"""``lit_bar.optim.SAM`` and ``functional_sam_step`` under ``torch.autocast`` and with a ``GradScaler``.

The references are plain-torch loops written here: SAM (Alg. 1) and Functional-SAM (docs/algorithms.md
§5) with one autocast region per forward, so no cached low-precision copy of a weight outlives
the weight's value; and torch's own ``GradScaler`` idiom (``scale → backward → step → update``)
driving a plain optimizer. CPU autocast: bf16, and fp16 with ``torch.amp.GradScaler("cpu")``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_bar.optim import SAM, functional_sam_step

LR, RHO = 0.1, 0.5
Batch = tuple[torch.Tensor, torch.Tensor]


def make_net(seed: int = 0) -> nn.Module:
    """Linear → Tanh → Linear in float32 (nonlinear in w, so SAM, FSAM and SGD all differ)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))


def make_batches(n: int = 3, shift: float = 0.0) -> list[Batch]:
    """``n`` regression batches of 8 rows; ``shift`` moves the targets (large: fp16 overflow)."""
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen) + shift) for _ in range(n)]


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


def forward(net: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One forward in its own autocast region (its cached casts die with it)."""
    with torch.autocast("cpu", dtype=dtype):
        return net(x)


def hand_sam(net: nn.Module, batches: list[Batch], rho: float, functional: bool, dtype: torch.dtype) -> None:
    """SAM / Functional-SAM with SGD, each forward in its own autocast region; updates ``net``."""
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=LR)
    for x, y in batches:
        out = forward(net, x, dtype)
        dl_df, *grads = torch.autograd.grad(F.mse_loss(out.float(), y), [out, *params])
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.add_(rho * g / norm)
        out = forward(net, x, dtype)
        if functional:  # J_f(w + ε)ᵀ · ∂L/∂f(w)
            grads = torch.autograd.grad(out, params, grad_outputs=dl_df)
        else:
            grads = torch.autograd.grad(F.mse_loss(out.float(), y), params)
        with torch.no_grad():
            for p, w, g in zip(params, saved, grads, strict=True):
                p.copy_(w)
                p.grad = g
        opt.step()


def lit_bar_sam(net: nn.Module, batches: list[Batch], api: str, dtype: torch.dtype) -> None:
    """The code under test, each SAM step inside one autocast region (both forwards, ε, restore)."""
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    for x, y in batches:

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = F.mse_loss(net(x).float(), y)
            loss.backward()
            return loss

        with torch.autocast("cpu", dtype=dtype):
            if api == "two_steps":
                F.mse_loss(net(x).float(), y).backward()
                opt.first_step(zero_grad=True)
                F.mse_loss(net(x).float(), y).backward()
                opt.second_step(zero_grad=True)
            elif api == "closure":
                opt.step(closure)
            else:
                functional_sam_step(opt, lambda x=x: net(x), lambda out, y=y: F.mse_loss(out.float(), y))


@pytest.mark.parametrize("api", ["two_steps", "closure", "functional"])
def test_one_autocast_region_around_the_step_sees_the_perturbed_weights(api: str) -> None:
    """bf16 autocast caches each weight's bf16 copy; ``w += ε`` in place must not reuse a stale one.

    Before the fix the autocast cache made the second forward run at w: the update equalled
    plain SGD's (difference 0.0), which the ρ = 0 line below shows is far from SAM's.
    """
    batches = make_batches()
    functional = api == "functional"
    expected, sgd, other = make_net(), make_net(), make_net()
    hand_sam(expected, batches, RHO, functional, torch.bfloat16)
    hand_sam(sgd, batches, 0.0, functional, torch.bfloat16)
    hand_sam(other, batches, RHO, not functional, torch.bfloat16)
    assert max_diff(expected, sgd) > 1e-2  # ρ = 0 (what the stale cache gave) is far off
    assert max_diff(expected, other) > 1e-3  # and so is the other perturbation

    net = make_net()
    lit_bar_sam(net, batches, api, torch.bfloat16)
    assert max_diff(net, expected) < 1e-5


def hand_scaled_sam(
    net: nn.Module, batches: list[Batch], scaler: torch.amp.GradScaler, functional: bool
) -> tuple[list[float], list[bool]]:
    """SAM with torch's GradScaler idiom around plain SGD, fp16 autocast per forward.

    ε = ρ g/‖g‖ does not depend on the loss scale, and is 0 when g is not finite (the step is
    then skipped anyway). Returns the scale after each step and whether each step moved ``net``.
    """
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=LR)
    scales, moved = [], []
    for x, y in batches:
        before = [p.detach().clone() for p in params]
        out = forward(net, x, torch.float16)
        dl_df, *grads = torch.autograd.grad(scaler.scale(F.mse_loss(out.float(), y)), [out, *params])
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
        finite = bool(torch.isfinite(norm))
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.add_(RHO * g / norm if finite else torch.zeros_like(p))
        out = forward(net, x, torch.float16)
        if functional:
            torch.autograd.backward(out, grad_tensors=dl_df)
        else:
            scaler.scale(F.mse_loss(out.float(), y)).backward()
        with torch.no_grad():
            for p, w in zip(params, before, strict=True):
                p.copy_(w)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        scales.append(scaler.get_scale())
        moved.append(any(not torch.equal(p, w) for p, w in zip(params, before, strict=True)))
    return scales, moved


def lit_bar_scaled_sam(
    net: nn.Module, batches: list[Batch], scaler: torch.amp.GradScaler, functional: bool
) -> list[float]:
    """The README's GradScaler loop for ``SAM`` (or ``functional_sam_step(..., scaler=...)``)."""
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    scales = []
    for x, y in batches:
        if functional:
            functional_sam_step(
                opt,
                lambda x=x: forward(net, x, torch.float16),
                lambda out, y=y: F.mse_loss(out.float(), y),
                scaler=scaler,
            )
        else:
            scaler.scale(F.mse_loss(forward(net, x, torch.float16).float(), y)).backward()
            opt.first_step(zero_grad=True)
            scaler.scale(F.mse_loss(forward(net, x, torch.float16).float(), y)).backward()
            opt.second_step(zero_grad=True, scaler=scaler)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales


def _scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", growth_interval=100)


@pytest.mark.parametrize("functional", [False, True], ids=["sam", "functional"])
def test_grad_scaler_path_skips_the_overflow_step_and_steps_on_unscaled_gradients(functional: bool) -> None:
    """The initial scale 2¹⁶ overflows fp16 on the first batch: that step is skipped (weights
    bitwise unchanged, scale halved); the others follow the hand GradScaler loop."""
    batches = make_batches(4, shift=1.0)
    expected = make_net()
    hand_scales, moved = hand_scaled_sam(expected, batches, _scaler(), functional)
    assert hand_scales[0] == 2.0**15 and not moved[0] and sum(moved) >= 2
    sgd_on_scaled = make_net()  # the old second_step: the base optimizer saw scaled gradients
    sam = SAM(sgd_on_scaled.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    x, y = batches[1]
    (2.0**15 * F.mse_loss(sgd_on_scaled(x), y)).backward()
    sam.first_step(zero_grad=True)
    (2.0**15 * F.mse_loss(sgd_on_scaled(x), y)).backward()
    sam.second_step()
    assert max_diff(sgd_on_scaled, expected) > 1.0

    net, start = make_net(), make_net()
    scaler = _scaler()
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    x, y = batches[0]
    if functional:
        functional_sam_step(
            opt, lambda: forward(net, x, torch.float16), lambda o: F.mse_loss(o.float(), y), scaler=scaler
        )
    else:
        scaler.scale(F.mse_loss(forward(net, x, torch.float16).float(), y)).backward()
        opt.first_step(zero_grad=True)
        scaler.scale(F.mse_loss(forward(net, x, torch.float16).float(), y)).backward()
        opt.second_step(zero_grad=True, scaler=scaler)
    scaler.update()
    assert max_diff(net, start) == 0.0 and scaler.get_scale() == 2.0**15

    net = make_net()
    assert lit_bar_scaled_sam(net, batches, _scaler(), functional) == hand_scales
    assert max_diff(net, expected) < 1e-6


def test_step_without_closure_points_to_the_grad_scaler_path() -> None:
    net = make_net()
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(F.mse_loss(net(torch.ones(2, 4)), torch.zeros(2, 2))).backward()
    with pytest.raises(ValueError, match=r"second_step\(scaler=scaler\)"):
        scaler.step(opt)
