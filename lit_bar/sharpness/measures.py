"""The three sharpness measures: worst-case, average, and the Hessian's top eigenvalue.

The formulas, their sources and the choice of radius are in :mod:`lit_bar.sharpness`; the vector
arithmetic over the trainable tensors is in :mod:`lit_bar.sharpness.vectors`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lit_bar.sharpness.vectors import (
    LossFn,
    ascend,
    loss_and_grads,
    mean_hvp,
    mean_loss,
    norm,
    random_direction,
    set_weights,
    starting_vector,
)

DEFAULT_RHO = 0.05
MEASURES = ("worst", "average", "hessian_top")


@dataclass(frozen=True)
class Estimate:
    """A sharpness figure and how uncertain it is.

    Attributes:
        value: The estimate.
        spread: Worst-case and average sharpness: the standard error of the mean over the samples
            (batches, resp. direction pairs). Top eigenvalue: |λ_t − λ_{t−1}|, the change in the
            last power iteration. NaN where undefined (one sample, one iteration).
        samples: Batches, direction pairs, or power iterations behind the value.
    """

    value: float
    spread: float
    samples: int


def worst_case_sharpness(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    batches: Sequence[Any],
    rho: float = DEFAULT_RHO,
    steps: int = 1,
    module: torch.nn.Module | None = None,
) -> Estimate:
    """mean over batches B of max_{‖ε‖ ≤ ρ} L_B(w + ε) − L_B(w), by ``steps`` normalised ascent steps.

    Per batch: ε₀ = 0, ε_{i+1} = Π_ρ(ε_i + ρ g_i / ‖g_i‖) with g_i = ∇L_B(w + ε_i) and Π_ρ the
    projection onto the ball ‖ε‖ ≤ ρ; the batch's value is max_{i ≥ 1} L_B(w + ε_i) − L_B(w), a lower
    bound of the maximum (``steps=1``: SAM's ε̂, Foret et al. Eq. 2). A zero gradient gives ε = 0.
    Cost per batch: ``steps`` forward+backward passes and one forward pass.

    Args:
        loss_fn: ``batch -> scalar loss`` (mean over the batch's examples).
        params: The tensors to perturb (all require grad).
        batches: One sample of the sharpness each; the spread is the standard error over them.
        rho: Radius ρ > 0 of the ball, over all ``params`` together.
        steps: Ascent steps k ≥ 1.
        module: Put in eval mode while measuring (mode restored after).
    """
    params = _check(params, batches)
    _check_positive("rho", rho, float)
    _check_positive("steps", steps, int)
    samples = []
    with _measuring(params, module) as saved:
        for batch in batches:
            eps = [torch.zeros_like(s) for s in saved]
            base = best = None
            for i in range(steps + 1):
                set_weights(params, saved, eps)
                if i < steps:
                    loss, grads = loss_and_grads(loss_fn, params, batch)
                    eps = ascend(eps, grads, rho)
                else:
                    with torch.no_grad():
                        loss = loss_fn(batch).detach()
                if i == 0:
                    base = loss
                else:
                    best = loss if best is None else torch.maximum(best, loss)
            samples.append(float(best) - float(base))
    return _mean_estimate(samples)


def average_sharpness(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    batches: Sequence[Any],
    rho: float = DEFAULT_RHO,
    directions: int = 8,
    seed: int = 0,
    module: torch.nn.Module | None = None,
) -> Estimate:
    """E_δ L(w + δ) − L(w) over δ uniform on the sphere ‖δ‖ = ρ, from ``directions`` antithetic pairs.

    Each pair gives ½(L(w + δ) + L(w − δ)) − L(w), L the mean loss over ``batches``; the value is their
    mean, the spread its standard error. δ = ρ z / ‖z‖ with z ~ N(0, I) from a generator seeded with
    ``seed`` (the global RNG is not drawn from). Cost: (2 · directions + 1) forward passes per batch.

    Args:
        loss_fn: ``batch -> scalar loss`` (mean over the batch's examples).
        params: The tensors to perturb.
        batches: The loss is their mean.
        rho: Radius ρ > 0 of the sphere, over all ``params`` together.
        directions: Antithetic pairs ±δ (≥ 1; the spread needs ≥ 2).
        seed: Seed of the directions.
        module: Put in eval mode while measuring (mode restored after).
    """
    params = _check(params, batches)
    _check_positive("rho", rho, float)
    _check_positive("directions", directions, int)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    with _measuring(params, module) as saved, torch.no_grad():
        set_weights(params, saved, [torch.zeros_like(s) for s in saved])
        base = mean_loss(loss_fn, batches)
        for _ in range(directions):
            delta = random_direction(saved, rho, generator)
            set_weights(params, saved, delta)
            plus = mean_loss(loss_fn, batches)
            set_weights(params, saved, torch._foreach_neg(delta))
            minus = mean_loss(loss_fn, batches)
            samples.append((float(plus) + float(minus)) / 2 - float(base))
    return _mean_estimate(samples)


def hessian_top_eigenvalue(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    batches: Sequence[Any],
    iterations: int = 20,
    tolerance: float = 1e-3,
    seed: int = 0,
    module: torch.nn.Module | None = None,
) -> Estimate:
    """The largest eigenvalue λ_max of ∇²L(w), by power iteration on Hessian-vector products.

    v₀ is the unit gradient of the mean loss plus a unit Gaussian direction (generator seeded with
    ``seed``), normalised: the gradient lies mostly in the top eigenspace of the Hessian (Gur-Ari et
    al., "Gradient Descent Happens in a Tiny Subspace", 2018), which saves iterations over a random
    start (LoRA on MiniLM, one batch: within 1 % of the converged value after 3 products instead of
    7), and the random part reaches every eigenvector however the gradient points (it costs one
    forward+backward pass per batch). Then λ_t = v_tᵀ H v_t and v_{t+1} = H v_t / ‖H v_t‖
    (PyHessian, Yao et al. 2020, Alg. 1), H v by double backward through the mean loss over
    ``batches`` (attention through torch's math kernel, the one with a double backward). Stops after
    ``iterations`` products, or once |λ_t − λ_{t−1}| ≤ ``tolerance`` · |λ_t|; the spread is that
    last change. Power iteration converges to the eigenvalue of largest magnitude; when that one is
    negative (negative curvature dominates, as in an underfitted model), a second iteration on the
    shifted H − λ_dom·I, whose eigenvalues λ_i − λ_dom are all ≥ 0 and largest for λ_max, gives
    λ_max = μ + λ_dom (the spread is then the second iteration's last change, ``samples`` counts both).
    Cost per iteration: one double backward (about two to three forward+backward passes) per batch.

    Args:
        loss_fn: ``batch -> scalar loss`` (mean over the batch's examples), twice differentiable.
        params: The tensors the Hessian is taken over.
        batches: The loss is their mean.
        iterations: At most this many Hessian-vector products (≥ 1; the spread needs ≥ 2).
        tolerance: Relative change that ends the iteration (≥ 0; 0 runs all iterations).
        seed: Seed of the starting vector.
        module: Put in eval mode while measuring (mode restored after).
    """
    params = _check(params, batches)
    _check_positive("iterations", iterations, int)
    if not isinstance(tolerance, int | float) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    generator = torch.Generator().manual_seed(seed)
    with _measuring(params, module):
        start = starting_vector(loss_fn, params, batches, generator)
        values = _power_iteration(loss_fn, params, batches, start, iterations, tolerance)
        products = len(values)
        dominant = values[-1]
        if dominant < 0:  # λ_dom = λ_min: iterate on H − λ_dom·I, whose top eigenvalue is λ_max − λ_dom
            shifted = _power_iteration(loss_fn, params, batches, start, iterations, tolerance, dominant)
            values, products = [value + dominant for value in shifted], products + len(shifted)
    spread = abs(values[-1] - values[-2]) if len(values) > 1 else math.nan
    return Estimate(values[-1], spread, products)


def _power_iteration(
    loss_fn: LossFn,
    params: list[torch.Tensor],
    batches: Sequence[Any],
    v: list[torch.Tensor],
    iterations: int,
    tolerance: float,
    shift: float = 0.0,
) -> list[float]:
    """The Rayleigh quotients vᵀ(H − shift·I)v of power iteration from the unit vector ``v``."""
    values: list[float] = []
    for _ in range(iterations):
        hv = mean_hvp(loss_fn, params, batches, v)
        if shift:
            hv = torch._foreach_add(hv, v, alpha=-shift)
        values.append(float(sum(product.sum() for product in torch._foreach_mul(v, hv))))  # vᵀHv
        hv_norm = float(norm(hv))
        if hv_norm == 0 or not math.isfinite(hv_norm):
            break
        v = torch._foreach_div(hv, hv_norm)
        if len(values) > 1 and abs(values[-1] - values[-2]) <= tolerance * abs(values[-1]):
            break
    return values


def measure_sharpness(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    batches: Sequence[Any],
    measures: Sequence[str] = MEASURES,
    rho: float = DEFAULT_RHO,
    ascent_steps: int = 1,
    directions: int = 8,
    average_rho: float | None = None,
    iterations: int = 20,
    tolerance: float = 1e-3,
    seed: int = 0,
    module: torch.nn.Module | None = None,
) -> dict[str, Estimate]:
    """The ``measures`` (names from :data:`MEASURES`) of the same weights on the same batches.

    Args:
        loss_fn: ``batch -> scalar loss``.
        params: The trainable tensors.
        batches: The batches measured on.
        measures: Any of ``"worst"``, ``"average"``, ``"hessian_top"``.
        rho: Radius of the worst-case sharpness.
        ascent_steps: Ascent steps of the worst-case sharpness.
        directions: Antithetic direction pairs of the average sharpness.
        average_rho: Radius of the average sharpness; ``None``: ``rho``.
        iterations: Power iterations (at most) for the top eigenvalue.
        tolerance: Relative change that ends the power iteration.
        seed: Seed of the random directions and of the power iteration's start.
        module: Put in eval mode while measuring.
    """
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ValueError(
            f"unknown or no sharpness measures {list(measures)!r}; allowed: {', '.join(MEASURES)}"
        )
    out: dict[str, Estimate] = {}
    if "worst" in measures:
        out["worst"] = worst_case_sharpness(loss_fn, params, batches, rho, ascent_steps, module)
    if "average" in measures:
        radius = rho if average_rho is None else average_rho
        out["average"] = average_sharpness(loss_fn, params, batches, radius, directions, seed, module)
    if "hessian_top" in measures:
        out["hessian_top"] = hessian_top_eigenvalue(
            loss_fn, params, batches, iterations, tolerance, seed, module
        )
    return out


# ----------------------------------------------------------------- helpers
def _check(params: Sequence[torch.Tensor], batches: Sequence[Any]) -> list[torch.Tensor]:
    params = list(params)
    if not params:
        raise ValueError("no parameters to measure sharpness over (params is empty)")
    for i, p in enumerate(params):
        if not (p.is_floating_point() and p.requires_grad):
            raise ValueError(
                f"params[{i}] (shape {tuple(p.shape)}, {p.dtype}) must be a floating tensor with "
                "requires_grad=True: pass the trainable parameters"
            )
    if len(batches) == 0:
        raise ValueError("no batches to measure sharpness on (batches is empty)")
    return params


def _check_positive(name: str, value: Any, kind: type) -> None:
    """``kind=int``: an int >= 1; ``kind=float``: a finite number > 0 (bools are neither)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        ok = False
    elif kind is int:
        ok = isinstance(value, int) and value >= 1
    else:
        ok = math.isfinite(value) and value > 0
    if not ok:
        what = "an int >= 1" if kind is int else "a finite number > 0"
        raise ValueError(f"{name} must be {what}, got {value!r}")


@contextlib.contextmanager
def _measuring(params: list[torch.Tensor], module: torch.nn.Module | None) -> Iterator[list[torch.Tensor]]:
    """Gradients on (also inside inference mode), module in eval mode, RNG forked; yields a copy of
    the weights and puts it back bitwise on exit, and each submodule's mode too."""
    modes = [(m, m.training) for m in module.modules()] if module is not None else []
    cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    saved = [p.detach().clone() for p in params]
    try:
        with torch.random.fork_rng(devices=cuda), torch.inference_mode(False), torch.enable_grad():
            if module is not None:
                module.eval()
            yield saved
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, saved)
        for m, training in modes:
            m.training = training


def _mean_estimate(samples: list[float]) -> Estimate:
    n = len(samples)
    mean = sum(samples) / n
    if n < 2:
        return Estimate(mean, math.nan, n)
    variance = sum((s - mean) ** 2 for s in samples) / (n - 1)
    return Estimate(mean, math.sqrt(variance / n), n)
