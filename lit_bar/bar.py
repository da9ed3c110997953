"""Balancedness-aware regularisation, nBAR and oBAR (paper Sec. 5.2, Alg. 2 and 3; ALGORITHMS.md §3).

Each optimizer step, per pair, choose a sign s ∈ {+1, −1} and apply, decoupled like AdamW's
weight decay (never through the optimizer's preconditioner)::

    x ← x − η_t · μ_t · s · x
    y ← y + η_t · μ_t · s · y          (one descent step on s·(μ_t/2)(‖x‖² − ‖y‖²))

- nBAR (Alg. 2): s = +1 if ‖g_x‖ < ‖g_y‖ else −1  (mimics SAM's pull, Thm. 2)
- oBAR (Alg. 3): s = +1 if ‖x‖ > ‖y‖ else −1      (contracts B toward 0, Thm. 3 / Lemma 2)

Everything is vectorised over pairs with ``torch._foreach_*`` and stays on the device: no host
sync, no branching on tensor values. Pure torch: nothing here imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lit_bar.pairs import FactorPair

__all__ = ["MODES", "SCHEDULES", "apply_bar", "bar_signs", "mu_at", "validate_mode", "validate_schedule"]

MODES = ("nbar", "obar")
SCHEDULES = ("constant", "linear", "cosine")


def validate_mode(mode: str) -> str:
    """Return ``mode`` if it names a BAR rule, else raise a ``ValueError`` listing the rules."""
    if mode not in MODES:
        raise ValueError(f"unknown BAR mode {mode!r}; allowed: {', '.join(MODES)}")
    return mode


def validate_schedule(schedule: str) -> str:
    """Return ``schedule`` if it names a μ schedule, else raise a ``ValueError`` listing them."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown μ schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    return schedule


def mu_at(mu: float, step: int, total_steps: int, schedule: str = "constant") -> float:
    """μ_t = μ₀ · h(t/T) with h constant (1), linear (1 − t/T) or cosine (½(1 + cos πt/T)) (§3).

    ``step`` is the number of optimizer steps already taken; past ``total_steps`` the decaying
    schedules stay at 0.
    """
    validate_schedule(schedule)
    if schedule == "constant":
        return mu
    if total_steps <= 0:
        raise ValueError(f"schedule {schedule!r} needs total_steps > 0, got {total_steps}")
    progress = min(step / total_steps, 1.0)
    if schedule == "linear":
        return mu * (1.0 - progress)
    return mu * 0.5 * (1.0 + math.cos(math.pi * progress))


def bar_signs(mode: str, pairs: Sequence[FactorPair]) -> torch.Tensor:
    """The sign s ∈ {+1, −1} of every pair (Alg. 2 for ``"nbar"``, Alg. 3 for ``"obar"``).

    nBAR reads the factors' ``.grad``; a pair whose factor has no gradient gets s = −1 here and is
    left untouched by :func:`apply_bar` (its gradient mask is 0).
    """
    validate_mode(mode)
    if not pairs:
        raise ValueError("bar_signs() needs at least one FactorPair, got an empty sequence")
    if mode == "obar":
        left = torch._foreach_norm([p.x.detach() for p in pairs])
        right = torch._foreach_norm([p.y.detach() for p in pairs])
        return torch.where(torch.stack(right) < torch.stack(left), 1.0, -1.0)  # ‖x‖ > ‖y‖
    gx = [_grad_or_zero(p.x) for p in pairs]
    gy = [_grad_or_zero(p.y) for p in pairs]
    nx = torch.stack(torch._foreach_norm(gx)).float()
    ny = torch.stack(torch._foreach_norm(gy)).float()
    return torch.where(nx < ny, 1.0, -1.0)  # ‖g_x‖ < ‖g_y‖


def _grad_or_zero(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.grad if tensor.grad is not None else torch.zeros((), device=tensor.device)


@torch.no_grad()
def apply_bar(
    pairs: Sequence[FactorPair],
    signs: torch.Tensor,
    lrs: torch.Tensor | Sequence[float] | float,
    mu: float,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply ``x ← x(1 − c)``, ``y ← y(1 + c)`` with ``c = η · μ · s`` per pair, in place (§3).

    Args:
        pairs: The pairs to update.
        signs: One sign per pair, from :func:`bar_signs`.
        lrs: The learning rate η_t of each pair's parameter group (or one for all).
        mu: μ_t, already scheduled (:func:`mu_at`).
        keep: Optional 0-d tensor, 1 to apply and 0 to skip, e.g. 0 when the precision plugin
            skips a non-finite fp16 step. A tensor, so skipping needs no host sync.

    Returns:
        The per-pair coefficients ``c`` that were applied (0 where skipped).
    """
    device = signs.device
    dtype = torch.float32  # float64 factors get a float64 coefficient: η·μ not rounded to float32
    for pair in pairs:
        dtype = torch.promote_types(dtype, torch.promote_types(pair.x.dtype, pair.y.dtype))
    coeff = torch.as_tensor(lrs, dtype=dtype, device=device) * mu * signs.to(dtype)
    has_grad = [p.x.grad is not None and p.y.grad is not None for p in pairs]
    if not all(has_grad):  # a Python fact about the graph, not a tensor value
        coeff = coeff * torch.tensor(has_grad, dtype=coeff.dtype, device=device)
    if keep is not None:
        coeff = coeff * keep.to(device=device, dtype=coeff.dtype)
    shrink = (1.0 - coeff).unbind()
    grow = (1.0 + coeff).unbind()
    torch._foreach_mul_([p.x for p in pairs], shrink)
    torch._foreach_mul_([p.y for p in pairs], grow)
    return coeff
