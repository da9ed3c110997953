"""Balancedness-aware regularisation, nBAR and oBAR (paper Sec. 5.2, Alg. 2 and 3; docs/algorithms.md §3).

Each optimizer step, per pair, choose a sign s ∈ {+1, −1} and apply, decoupled like AdamW's
weight decay (never through the optimizer's preconditioner)::

    x ← x − η_t · μ_t · s · x
    y ← y + η_t · μ_t · s · y          (one descent step on s·(μ_t/2)(‖x‖² − ‖y‖²))

- nBAR (Alg. 2): s = +1 if ‖g_x‖ < ‖g_y‖ else −1  (mimics SAM's pull, Thm. 2)
- oBAR (Alg. 3): s = +1 if ‖x‖ > ‖y‖ else −1      (contracts B toward 0, Thm. 3 / Lemma 2)

Everything is vectorised over pairs with ``torch._foreach_*`` and stays on the device: no host
sync, no branching on tensor values, and the learning rates reach the kernels as scalar arguments
(no host-to-device copy). :class:`BAR` is the one implementation of the per-step rule, for plain
loops and for the Lightning and transformers callbacks. Pure torch: nothing here imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from lit_bar.algorithms.pairs import FactorPair, module_pairs
from lit_bar.algorithms.sharded import global_norm_squares, local, shard_group

__all__ = [
    "BAR",
    "MODES",
    "SCHEDULES",
    "BarStep",
    "apply_bar",
    "bar_signs",
    "finite_gradients",
    "mu_at",
    "validate_bar_settings",
    "validate_mode",
    "validate_schedule",
]

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


def validate_bar_settings(
    mode: str, mu: float, schedule: str, total_steps: int | None
) -> tuple[str, float, str, int | None]:
    """Check BAR's four settings (every front end takes the same ones) and return them, μ as a float.

    Raises:
        ValueError: naming the bad value and what is allowed.
    """
    validate_mode(mode)
    validate_schedule(schedule)
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not 0 <= mu < math.inf:
        raise ValueError(f"mu must be a finite number >= 0, got {mu!r}")
    if total_steps is not None and (
        isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
    ):
        raise ValueError(f"total_steps must be a positive int or None, got {total_steps!r}")
    return mode, float(mu), schedule, total_steps


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
        left, right = [p.x.detach() for p in pairs], [p.y.detach() for p in pairs]
    else:
        left, right = [_grad_or_zero(p.x) for p in pairs], [_grad_or_zero(p.y) for p in pairs]
    group = shard_group([*left, *right])
    if group is None:
        nx, ny = torch.stack(torch._foreach_norm(left)), torch.stack(torch._foreach_norm(right))
        if mode == "nbar":
            nx, ny = nx.float(), ny.float()
    else:  # FSDP2: every slice's squared norm, summed over the processes in one all-reduce
        squares = torch.stack(torch._foreach_norm([local(t) for t in [*left, *right]])).double().square()
        nx, ny = global_norm_squares(squares, group).sqrt().float().split(len(pairs))
    if mode == "obar":
        return torch.where(ny < nx, 1.0, -1.0)  # ‖x‖ > ‖y‖
    return torch.where(nx < ny, 1.0, -1.0)  # ‖g_x‖ < ‖g_y‖


def _grad_or_zero(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.grad if tensor.grad is not None else torch.zeros((), device=local(tensor).device)


@torch.no_grad()
def apply_bar(
    pairs: Sequence[FactorPair],
    signs: torch.Tensor,
    lrs: Sequence[float] | float,
    mu: float,
    keep: torch.Tensor | None = None,
    y_lrs: Sequence[float] | float | None = None,
) -> torch.Tensor:
    """Apply ``x ← x(1 − η_x μ s)``, ``y ← y(1 + η_y μ s)`` per pair, in place (§3).

    Each factor takes the learning rate of its own parameter group, as AdamW's decoupled weight
    decay does (LoRA+ puts B in a group with a larger rate). The learning rates are Python numbers
    and reach the kernels as scalar arguments (``torch._foreach_mul`` with a scalar list): no
    host-to-device copy, no host sync.

    Args:
        pairs: The pairs to update.
        signs: One sign per pair, from :func:`bar_signs`.
        lrs: η of each pair's x (or one for all).
        mu: μ_t, already scheduled (:func:`mu_at`).
        keep: Optional 0-d tensor, 1 to apply and 0 to skip, e.g. 0 when the precision plugin
            skips a non-finite fp16 step. A tensor, so skipping needs no host sync.
        y_lrs: η of each pair's y; ``None``: the same as ``lrs``.

    Returns:
        The per-pair coefficients ``η_x μ s`` applied to x (0 where skipped).
    """
    x_lrs = _per_pair(lrs, len(pairs), "lrs")
    y_lrs = x_lrs if y_lrs is None else _per_pair(y_lrs, len(pairs), "y_lrs")
    dtype = torch.float32  # float64 factors get a float64 coefficient: η·μ not rounded to float32
    for pair in pairs:
        dtype = torch.promote_types(dtype, torch.promote_types(pair.x.dtype, pair.y.dtype))
    # a pair whose factor has no gradient is left alone: a Python fact about the graph, not a tensor value
    on = [float(p.x.grad is not None and p.y.grad is not None) for p in pairs]
    unit = list(signs.to(dtype).unbind())
    coeff_x = torch._foreach_mul(unit, [lr * mu * o for lr, o in zip(x_lrs, on, strict=True)])
    coeff_y = torch._foreach_mul(unit, [lr * mu * o for lr, o in zip(y_lrs, on, strict=True)])
    if keep is not None:
        keep = keep.to(dtype)
        torch._foreach_mul_(coeff_x, keep)
        torch._foreach_mul_(coeff_y, keep)
    shrink = torch._foreach_add(torch._foreach_neg(coeff_x), 1.0)
    grow = torch._foreach_add(coeff_y, 1.0)
    torch._foreach_mul_([local(p.x) for p in pairs], shrink)  # FSDP2: each process scales its slices
    torch._foreach_mul_([local(p.y) for p in pairs], grow)
    return torch.stack(coeff_x)


def _per_pair(lrs: Sequence[float] | float, count: int, name: str) -> list[float]:
    if isinstance(lrs, torch.Tensor):
        raise TypeError(f"{name} must be Python numbers (a tensor would cost a host copy), got a tensor")
    values = [float(lrs)] * count if isinstance(lrs, int | float) else [float(v) for v in lrs]
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} learning rates for {count} pairs")
    return values


def finite_gradients(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """1 if every gradient the optimizer holds is finite, else 0 (0-d tensor: no host sync); None if none.

    A GradScaler skips exactly the steps where this is 0 (an inf or NaN, scaled or not), so BAR
    multiplies its update by it to skip them too (docs/algorithms.md §3, last item).
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return None
    norms = torch.stack([n.float() for n in torch._foreach_norm([local(g) for g in grads])])
    return torch.isfinite(norms).all().float()


class BarStep(NamedTuple):
    """What one BAR step did: the signs, which pairs were updated (1/0), and μ_t."""

    signs: torch.Tensor
    active: torch.Tensor
    mu: float


class BAR:
    """nBAR / oBAR for any training loop: call :meth:`step` right before ``optimizer.step()``.

    The one implementation of the rule: :class:`lit_bar.BalancednessCallback` (Lightning) and
    :class:`lit_bar.hf.BalancednessTrainerCallback` (transformers) drive this class too. Each
    :meth:`step` reads the final gradients (nBAR), picks every pair's sign, and scales the factors
    in place, decoupled from the optimizer (paper App. A.6; docs/algorithms.md §3); the optimizer
    then steps with the unchanged gradients. Nothing in it waits for the device.

    A plain loop::

        bar = BAR(find_lora_pairs(model), mode="nbar", mu=1.0)
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            bar.step(optimizer)          # after clipping, right before the optimizer step
            optimizer.step()
            optimizer.zero_grad()

    With a ``torch.amp.GradScaler``: ``scaler.scale(loss).backward()``, ``scaler.unscale_(optimizer)``
    (and clipping), ``bar.step(optimizer, scaler)``, ``scaler.step(optimizer)``, ``scaler.update()``.
    Given the scaler, BAR skips the steps the scaler will skip (a non-finite gradient) without a
    host sync. nBAR's sign compares gradient norms, so it does not depend on the loss scale.

    Args:
        pairs: The pairs (e.g. :func:`lit_bar.find_lora_pairs`), or a module whose pairs
            :func:`lit_bar.algorithms.pairs.module_pairs` finds (its ``factor_pairs()``, else its
            peft LoRA pairs).
        mode: ``"nbar"`` (Alg. 2: s = +1 if ‖g_x‖ < ‖g_y‖) or ``"obar"`` (Alg. 3: s = +1 if ‖x‖ > ‖y‖).
        mu: μ₀ ≥ 0.
        schedule: ``"constant"``, ``"linear"`` (1 − t/T) or ``"cosine"`` (½(1 + cos πt/T)).
        total_steps: T, the run's optimizer steps; needed by the decaying schedules.

    Attributes:
        steps_taken: Calls of :meth:`step` so far (t in μ_t).
        branch_counts: Cumulative pair-steps with s = +1 and with s = −1 (a device tensor).
    """

    def __init__(
        self,
        pairs: Sequence[FactorPair] | nn.Module,
        mode: str = "nbar",
        mu: float = 1.0,
        schedule: str = "constant",
        total_steps: int | None = None,
    ) -> None:
        self.mode, self.mu, self.schedule, self.total_steps = validate_bar_settings(
            mode, mu, schedule, total_steps
        )
        self.pairs = module_pairs(pairs) if isinstance(pairs, nn.Module) else list(pairs)
        if not self.pairs:
            raise ValueError(
                "BAR needs at least one FactorPair, got none (a module without peft LoRA layers?)"
            )
        self.steps_taken = 0
        self.branch_counts = torch.zeros(2, device=self.pairs[0].x.device)
        self._groups: tuple[int, list[int], list[int]] | None = None

    def mu_at(self, step: int) -> float:
        """μ at optimizer step ``step`` (:func:`mu_at`), with a clear error when T is missing."""
        if self.schedule != "constant" and self.total_steps is None:
            raise ValueError(
                f"schedule {self.schedule!r} needs total_steps (the run's optimizer steps); pass it to BAR"
            )
        return mu_at(self.mu, step, self.total_steps or 0, self.schedule)

    def step(self, optimizer: torch.optim.Optimizer, scaler: Any = None) -> BarStep:
        """Apply BAR once, with μ at :attr:`steps_taken`; call right before ``optimizer.step()``.

        Args:
            optimizer: The optimizer about to step; each factor's η is its own group's ``lr``.
            scaler: The ``torch.amp.GradScaler`` in use, if any: steps it will skip are skipped.
        """
        enabled = scaler is not None and getattr(scaler, "is_enabled", lambda: True)()
        result = self.apply(optimizer, self.steps_taken, finite_gradients(optimizer) if enabled else None)
        self.steps_taken += 1
        return result

    def apply(self, optimizer: torch.optim.Optimizer, step: int, keep: torch.Tensor | None = None) -> BarStep:
        """The rule at optimizer step ``step`` (the framework's counter); ``keep`` as in :func:`apply_bar`."""
        mu = self.mu_at(step)
        signs = bar_signs(self.mode, self.pairs)
        x_lrs, y_lrs = self.factor_lrs(optimizer)
        coeff = apply_bar(self.pairs, signs, x_lrs, mu, keep, y_lrs)
        active = (coeff != 0).to(signs.dtype)
        if self.branch_counts.device != signs.device:  # the model moved after BAR was built
            self.branch_counts = self.branch_counts.to(signs.device)
        self.branch_counts += torch.stack([(active * (signs > 0)).sum(), (active * (signs < 0)).sum()])
        return BarStep(signs, active, mu)

    def factor_lrs(self, optimizer: torch.optim.Optimizer) -> tuple[list[float], list[float]]:
        """η of each pair's x and of its y: their own parameter groups' ``lr`` (read each step)."""
        groups = optimizer.param_groups
        if self._groups is None or self._groups[0] != id(optimizer):
            group_of = {id(p): i for i, group in enumerate(groups) for p in group["params"]}
            missing = [p.name for p in self.pairs if id(p.x) not in group_of or id(p.y) not in group_of]
            if missing:
                raise ValueError(
                    f"BAR: pairs {missing[:5]} are not optimised by {type(optimizer).__name__} "
                    "(give the optimizer every factor, or BAR only the pairs it optimises)"
                )
            self._groups = (
                id(optimizer),
                [group_of[id(p.x)] for p in self.pairs],
                [group_of[id(p.y)] for p in self.pairs],
            )
        _, x_groups, y_groups = self._groups
        return [float(groups[i]["lr"]) for i in x_groups], [float(groups[i]["lr"]) for i in y_groups]

    def state_dict(self) -> dict[str, Any]:
        """Steps taken, T and the branch counts (plain types and a CPU tensor: ``weights_only``-safe)."""
        return {
            "steps_taken": self.steps_taken,
            "total_steps": self.total_steps,
            "branch_counts": self.branch_counts.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values."""
        self.steps_taken = int(state.get("steps_taken", 0))
        self.total_steps = state.get("total_steps", self.total_steps)
        self.branch_counts = state["branch_counts"].to(self.branch_counts.device).clone()
