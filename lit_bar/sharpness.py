"""How sharp a trained model is: worst-case and average sharpness, and the Hessian's top eigenvalue.

Pure torch (no Lightning): a loss function ``loss_fn(batch) -> Tensor`` (the mean loss of one batch),
the trainable tensors ``params`` (w, d numbers in all) and a list of batches. L_B is the loss of batch
B, L the mean of L_B over the batches, ‖·‖ the L2 norm over all of ``params`` together::

    worst-case  S_max = mean_B [ max_{‖ε‖ ≤ ρ} L_B(w + ε) − L_B(w) ]     (:func:`worst_case_sharpness`)
    average     S_avg = E_δ L(w + δ) − L(w),  δ uniform on the sphere ‖δ‖ = ρ  (:func:`average_sharpness`)
    Hessian     λ_top = the eigenvalue of ∇²L(w) largest in magnitude        (:func:`hessian_top_eigenvalue`)

* Worst-case sharpness is the inner maximum of SAM's objective (Foret et al., "Sharpness-Aware
  Minimization for Efficiently Improving Generalization", ICLR 2021, Eq. 1), taken per batch as
  its m-sharpness (Sec. 4) and as Andriushchenko et al. measure it ("A Modern Look at the
  Relationship between Sharpness and Generalization", ICML 2023, Sec. 2: the expectation over
  batches of the per-batch maximum). It descends from Keskar et al.'s sharpness ("On Large-Batch
  Training for Deep Learning: Generalization Gap and Sharp Minima", ICLR 2017, Metric 2.1), which
  maximises over a box instead of a ball. The maximum is estimated from below by k projected,
  normalised ascent steps ε ← Π_ρ(ε + ρ g/‖g‖); k = 1 gives SAM's ε̂ = ρ g/‖g‖ (Foret et al.,
  Eq. 2). Andriushchenko et al. use Auto-PGD; any feasible ε gives a lower bound, and the best
  iterate is kept.
* Average sharpness is Andriushchenko et al.'s average-case sharpness (Sec. 2) with directions
  uniform on the ρ-sphere (they draw Gaussians; on the sphere the radius is exactly ρ). For a
  quadratic it is ρ² tr(H) / (2d). Directions come in antithetic pairs ±δ, whose mean
  ½(L(w + δ) + L(w − δ)) − L(w) has the same expectation and no first-order term.
* The top eigenvalue is found by power iteration on Hessian-vector products (double backward), as
  PyHessian does (Yao et al., "PyHessian: Neural Networks Through the Lens of the Hessian", IEEE
  BigData 2020, Alg. 1); v_{t+1} = Hv_t / ‖Hv_t‖ and λ_t = v_tᵀ H v_t.

Each function returns an :class:`Estimate` (value, spread, samples) and leaves the weights bitwise
as they were, the RNG states (CPU and the parameters' CUDA devices) as they were and, when given the
``module``, every submodule's train/eval mode as it was (measurements run in eval mode: no
dropout). Gradients are taken with ``torch.autograd.grad``: ``.grad`` is never touched.

The radius ρ is absolute, over all trainable tensors together. Its default, 0.05, is SAM's default
radius (Foret et al.) and the middle of the paper's grid {0.01, 0.05, 0.1, 0.2} (the grid's SAM
rows train with these radii, so S_max at ρ = 0.05 is the quantity SAM at that radius minimises).
Over LoRA's parameters it is a small move: the trainable tensors of a rank-8 LoRA (query, value) on
MiniLM-L6 with its classifier and pooler have a norm of about 6.7 at initialisation (A factors at
their Kaiming initialisation, B = 0), so ρ = 0.05 is under 1 % of it; measured there on SST-2
(4 batches of 32), S_max = 0.025 ± 0.003 against a loss of 0.69: well resolved, yet local.
Average sharpness needs a larger radius (``average_rho`` of :func:`measure_sharpness`): random
directions see the mean curvature tr(H)/d, not the top one, and at ρ = 0.05 the same model gave
5e-8 ± 3e-8, the float32 resolution of the loss; at ρ = 1 it gave 3e-5 ± 1e-5.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "DEFAULT_RHO",
    "MEASURES",
    "Estimate",
    "average_sharpness",
    "hessian_top_eigenvalue",
    "measure_sharpness",
    "worst_case_sharpness",
]

DEFAULT_RHO = 0.05
MEASURES = ("worst", "average", "hessian_top")

LossFn = Callable[[Any], torch.Tensor]


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
                _set(params, saved, eps)
                if i < steps:
                    loss, grads = _loss_and_grads(loss_fn, params, batch)
                    eps = _ascend(eps, grads, rho)
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
        _set(params, saved, [torch.zeros_like(s) for s in saved])
        base = _mean_loss(loss_fn, batches)
        for _ in range(directions):
            delta = _random_direction(saved, rho, generator)
            _set(params, saved, delta)
            plus = _mean_loss(loss_fn, batches)
            _set(params, saved, torch._foreach_neg(delta))
            minus = _mean_loss(loss_fn, batches)
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
    """The eigenvalue of ∇²L(w) largest in magnitude, by power iteration on Hessian-vector products.

    v₀ is the unit gradient of the mean loss plus a unit Gaussian direction (generator seeded with
    ``seed``), normalised: the gradient lies mostly in the top eigenspace of the Hessian (Gur-Ari et
    al., "Gradient Descent Happens in a Tiny Subspace", 2018), which saves iterations over a random
    start (LoRA on MiniLM, one batch: within 1 % of the converged value after 3 products instead of
    7), and the random part reaches every eigenvector however the gradient points (it costs one
    forward+backward pass per batch). Then λ_t = v_tᵀ H v_t and v_{t+1} = H v_t / ‖H v_t‖
    (PyHessian, Yao et al. 2020, Alg. 1), H v by double backward through the mean loss over
    ``batches`` (attention through torch's math kernel, the one with a double backward). Stops after
    ``iterations`` products, or once |λ_t − λ_{t−1}| ≤ ``tolerance`` · |λ_t|; the spread is that
    last change. Power iteration converges to the eigenvalue
    of largest magnitude, so a negative value means negative curvature dominates. Cost per iteration:
    one double backward (about two to three forward+backward passes) per batch.

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
    values: list[float] = []
    with _measuring(params, module):
        v = _starting_vector(loss_fn, params, batches, generator)
        for _ in range(iterations):
            hv = _mean_hvp(loss_fn, params, batches, v)
            values.append(float(sum(product.sum() for product in torch._foreach_mul(v, hv))))  # vᵀHv
            norm = float(_norm(hv))
            if norm == 0 or not math.isfinite(norm):
                break
            v = torch._foreach_div(hv, norm)
            if len(values) > 1 and abs(values[-1] - values[-2]) <= tolerance * abs(values[-1]):
                break
    spread = abs(values[-1] - values[-2]) if len(values) > 1 else math.nan
    return Estimate(values[-1], spread, len(values))


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


def _set(params: list[torch.Tensor], saved: list[torch.Tensor], offset: list[torch.Tensor]) -> None:
    """w ← saved + offset (from the saved copy each time, so no rounding accumulates)."""
    with torch.no_grad():
        offset = [o.to(s.dtype) for o, s in zip(offset, saved, strict=True)]
        torch._foreach_copy_(params, torch._foreach_add(saved, offset))


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    norms = torch._foreach_norm(_wide(tensors))
    dtype = _wide_dtype(*(n.dtype for n in norms))
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device, dtype) for n in norms]))


def _wide_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32, or float64 if any of ``dtypes`` is: half precision is never worked in."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _wide(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.to(_wide_dtype(t.dtype)) for t in tensors]


def _loss_and_grads(loss_fn: LossFn, params: list[torch.Tensor], batch: Any) -> tuple[torch.Tensor, list]:
    loss = loss_fn(batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return loss.detach(), list(grads)


def _ascend(eps: list[torch.Tensor], grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """Π_ρ(ε + ρ g / ‖g‖); a zero gradient leaves ε as it is."""
    grads = _wide(grads)
    step = rho / _norm(grads).clamp_min(torch.finfo(torch.float32).tiny)
    moved = torch._foreach_add(_wide(eps), torch._foreach_mul(grads, step))
    shrink = (rho / _norm(moved)).clamp(max=1.0)  # ‖ε‖ = 0 gives inf, clamped to 1
    return torch._foreach_mul(moved, shrink)


def _mean_loss(loss_fn: LossFn, batches: Sequence[Any]) -> torch.Tensor:
    return sum(loss_fn(b).detach().double() for b in batches) / len(batches)


def _mean_hvp(
    loss_fn: LossFn, params: list[torch.Tensor], batches: Sequence[Any], v: list[torch.Tensor]
) -> list[torch.Tensor]:
    """H v of the mean loss over ``batches`` (one double backward per batch)."""
    total = [torch.zeros_like(p, dtype=_wide_dtype(p.dtype)) for p in params]
    for batch in batches:
        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
            loss = loss_fn(batch)
        grads = torch.autograd.grad(
            loss, params, create_graph=True, allow_unused=True, materialize_grads=True
        )
        dot = sum((g * vi.to(g.dtype)).sum() for g, vi in zip(grads, v, strict=True))
        if dot.requires_grad:  # else the gradient does not depend on w: H = 0
            hv = torch.autograd.grad(dot, params, allow_unused=True, materialize_grads=True)
            torch._foreach_add_(total, _wide(hv))
    return torch._foreach_div(total, float(len(batches)))


def _starting_vector(
    loss_fn: LossFn, params: list[torch.Tensor], batches: Sequence[Any], generator: torch.Generator
) -> list[torch.Tensor]:
    """(ĝ + ẑ) / ‖ĝ + ẑ‖: ĝ the unit gradient of the mean loss (0 if the gradient is), ẑ a unit Gaussian."""
    grads = [torch.zeros_like(p, dtype=_wide_dtype(p.dtype)) for p in params]
    for batch in batches:
        torch._foreach_add_(grads, _wide(_loss_and_grads(loss_fn, params, batch)[1]))
    unit = torch._foreach_div(grads, _norm(grads).clamp_min(torch.finfo(torch.float32).tiny))
    start = torch._foreach_add(unit, _random_direction(params, 1.0, generator))
    return torch._foreach_div(start, _norm(start))


def _random_direction(
    like: list[torch.Tensor], radius: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """ρ z / ‖z‖, z ~ N(0, I) drawn on the CPU (the same on every device), on ``like``'s devices, in
    float32 (float64 for float64 tensors)."""
    z = [torch.randn(t.shape, generator=generator, dtype=_wide_dtype(t.dtype)) for t in like]
    scale = radius / _norm(z)
    return [(zi * scale).to(t.device) for zi, t in zip(z, like, strict=True)]


def _mean_estimate(samples: list[float]) -> Estimate:
    n = len(samples)
    mean = sum(samples) / n
    if n < 2:
        return Estimate(mean, math.nan, n)
    variance = sum((s - mean) ** 2 for s in samples) / (n - 1)
    return Estimate(mean, math.sqrt(variance / n), n)
