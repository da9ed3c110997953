"""The trainable tensors as one vector w ∈ ℝ^d, for :mod:`lit_bar.sharpness.measures`.

Norms, ascent steps, Hessian-vector products and random directions over a list of tensors taken
together, worked in float32 (float64 for float64 tensors; never in half precision). Gradients come
from ``torch.autograd.grad``: ``.grad`` is never touched. The formulas are in :mod:`lit_bar.sharpness`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

LossFn = Callable[[Any], torch.Tensor]


def set_weights(params: list[torch.Tensor], saved: list[torch.Tensor], offset: list[torch.Tensor]) -> None:
    """w ← saved + offset (from the saved copy each time, so no rounding accumulates)."""
    with torch.no_grad():
        offset = [o.to(s.dtype) for o, s in zip(offset, saved, strict=True)]
        torch._foreach_copy_(params, torch._foreach_add(saved, offset))


def norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """‖·‖ of all ``tensors`` together, as one vector (in float32, or float64 if any tensor is)."""
    norms = torch._foreach_norm(wide(tensors))
    dtype = wide_dtype(*(n.dtype for n in norms))
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device, dtype) for n in norms]))


def wide_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32, or float64 if any of ``dtypes`` is: half precision is never worked in."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def wide(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.to(wide_dtype(t.dtype)) for t in tensors]


def loss_and_grads(loss_fn: LossFn, params: list[torch.Tensor], batch: Any) -> tuple[torch.Tensor, list]:
    loss = loss_fn(batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return loss.detach(), list(grads)


def ascend(eps: list[torch.Tensor], grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """Π_ρ(ε + ρ g / ‖g‖); a zero gradient leaves ε as it is."""
    grads = wide(grads)
    step = rho / norm(grads).clamp_min(torch.finfo(torch.float32).tiny)
    moved = torch._foreach_add(wide(eps), torch._foreach_mul(grads, step))
    shrink = (rho / norm(moved)).clamp(max=1.0)  # ‖ε‖ = 0 gives inf, clamped to 1
    return torch._foreach_mul(moved, shrink)


def mean_loss(loss_fn: LossFn, batches: Sequence[Any]) -> torch.Tensor:
    return sum(loss_fn(b).detach().double() for b in batches) / len(batches)


def mean_hvp(
    loss_fn: LossFn, params: list[torch.Tensor], batches: Sequence[Any], v: list[torch.Tensor]
) -> list[torch.Tensor]:
    """H v of the mean loss over ``batches`` (one double backward per batch)."""
    total = [torch.zeros_like(p, dtype=wide_dtype(p.dtype)) for p in params]
    for batch in batches:
        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
            loss = loss_fn(batch)
        grads = torch.autograd.grad(
            loss, params, create_graph=True, allow_unused=True, materialize_grads=True
        )
        dot = sum((g * vi.to(g.dtype)).sum() for g, vi in zip(grads, v, strict=True))
        if dot.requires_grad:  # else the gradient does not depend on w: H = 0
            hv = torch.autograd.grad(dot, params, allow_unused=True, materialize_grads=True)
            torch._foreach_add_(total, wide(hv))
    return torch._foreach_div(total, float(len(batches)))


def starting_vector(
    loss_fn: LossFn, params: list[torch.Tensor], batches: Sequence[Any], generator: torch.Generator
) -> list[torch.Tensor]:
    """(ĝ + ẑ) / ‖ĝ + ẑ‖: ĝ the unit gradient of the mean loss (0 if the gradient is), ẑ a unit Gaussian."""
    grads = [torch.zeros_like(p, dtype=wide_dtype(p.dtype)) for p in params]
    for batch in batches:
        torch._foreach_add_(grads, wide(loss_and_grads(loss_fn, params, batch)[1]))
    unit = torch._foreach_div(grads, norm(grads).clamp_min(torch.finfo(torch.float32).tiny))
    start = torch._foreach_add(unit, random_direction(params, 1.0, generator))
    return torch._foreach_div(start, norm(start))


def random_direction(
    like: list[torch.Tensor], radius: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """ρ z / ‖z‖, z ~ N(0, I) drawn on the CPU (the same on every device), on ``like``'s devices, in
    float32 (float64 for float64 tensors)."""
    z = [torch.randn(t.shape, generator=generator, dtype=wide_dtype(t.dtype)) for t in like]
    scale = radius / norm(z)
    return [(zi * scale).to(t.device) for zi, t in zip(z, like, strict=True)]
