"""SAM's ascent step ε: plain, adaptive, preconditioned (paper Alg. 1; docs/algorithms.md §2, §5).

    SAM (Alg. 1)           ε = ρ · g / ‖g‖
    ASAM (Kwon et al.)     ε = ρ · T² g / ‖T g‖,  T = diag(|w|) on weight matrices, T = I on
                           1-D tensors (biases, norm gains), whose magnitudes say nothing of scale
    preconditioned (002)   ε = ρ · P g / ‖P g‖,   P = diag(1 / (√v̂ + ε_adam)) from Adam's state

Norms run over every perturbed tensor together, with ``torch._foreach_*``; a zero or non-finite
norm gives ε = 0 (no division by zero, and no NaN copied into the weights). FSDP2-sharded tensors
(``DTensor``) are read through their local slices, and a norm over them costs one all-reduce of one
scalar (:mod:`lit_bar.algorithms.sharded`); ε is then each process's slice. Pure torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lit_bar.algorithms.sharded import global_norm_squares, local, shard_group
from lit_bar.optim.settings import PRECONDITIONERS, check_exclusive, validate_precondition

__all__ = [
    "PRECONDITIONERS",
    "adam_preconditioned",
    "global_norm",
    "move_to_perturbed",
    "restore_weights",
    "sam_perturbation",
    "validate_precondition",
]


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖(t₁, …, t_n)‖₂ over all tensors together, as a 0-d tensor on the first one's device.

    Computed in float32, or in float64 when any tensor is float64 (half precision never narrows it).
    FSDP2-sharded tensors: the norm of the whole tensors, from the local slices and one all-reduce.
    """
    return _norm([local(t) for t in tensors], shard_group(tensors))


def _norm(tensors: Sequence[torch.Tensor], group: torch.distributed.ProcessGroup | None) -> torch.Tensor:
    """:func:`global_norm` of (local slices) ``tensors``, summed over ``group`` when sharded."""
    device = tensors[0].device
    norms = torch._foreach_norm(list(tensors))
    dtype = _at_least_float32(*(n.dtype for n in norms))
    stacked = torch.stack([n.to(device=device, dtype=dtype) for n in norms])
    if group is None:
        return torch.linalg.vector_norm(stacked)
    return global_norm_squares(stacked.square().sum(), group).sqrt()


def _at_least_float32(*dtypes: torch.dtype) -> torch.dtype:
    """The promoted floating dtype of ``dtypes``, widened to float32 if narrower (fp16, bf16)."""
    dtype = torch.float32
    for other in dtypes:
        dtype = torch.promote_types(dtype, other)
    return dtype


def adam_preconditioned(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer
) -> list[torch.Tensor]:
    """P·g with P = diag(1 / (√v̂ + ε_adam)) read from an Adam/AdamW ``optimizer``'s state (§5).

    v̂ is the bias-corrected second moment ``exp_avg_sq / (1 − β₂^t)`` (``max_exp_avg_sq`` with
    ``amsgrad=True``, as Adam's own step uses); a parameter the optimizer has not stepped yet has
    P = I. ``params`` must belong to ``optimizer``.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = list(grads)
    idx, vs, steps, eps, log_beta2 = [], [], [], [], []
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            continue
        group = group_of[id(p)]
        idx.append(i)
        vs.append(local(state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]))
        steps.append(state["step"])
        eps.append(group["eps"])
        beta2 = group["betas"][1]
        log_beta2.append(math.log(beta2) if beta2 > 0 else -math.inf)
    if not idx:
        return out
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(
        denom, _sqrt_bias_corrections(steps, log_beta2, _at_least_float32(*(v.dtype for v in vs)))
    )
    torch._foreach_add_(denom, eps)
    scaled = torch._foreach_div([grads[i] for i in idx], denom)
    for i, value in zip(idx, scaled, strict=True):
        out[i] = value
    return out


def _sqrt_bias_corrections(
    steps: Sequence[torch.Tensor | float], log_beta2: Sequence[float], dtype: torch.dtype
) -> list[torch.Tensor]:
    """√(1 − β₂ᵗ) per parameter, computed where each step counter lives: no host↔device copy, no sync.

    torch's Adam keeps ``state["step"]`` as a CPU tensor (a device tensor when ``fused`` or
    ``capturable``): β₂ᵗ = exp(t · ln β₂) is taken on that tensor's own device, and a CPU result
    enters the device division as a 0-d CPU scalar (a kernel argument, not a copy).
    """
    counts = [
        t.to(dtype) if isinstance(t, torch.Tensor) else torch.full((), float(t), dtype=dtype) for t in steps
    ]
    powers = torch._foreach_mul(counts, list(log_beta2))
    torch._foreach_exp_(powers)  # β₂ᵗ
    torch._foreach_neg_(powers)
    torch._foreach_add_(powers, 1.0)
    torch._foreach_sqrt_(powers)
    return powers


@torch.no_grad()
def sam_perturbation(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    rho: float | Sequence[float],
    adaptive: bool | Sequence[bool] = False,
    optimizer: torch.optim.Optimizer | None = None,
    precondition: str | None = None,
) -> list[torch.Tensor]:
    """Return ε for each of ``params`` from their ascent gradients ``grads`` (Alg. 1, §2, §5).

    The norm runs over all of ``params`` together, also when ``rho`` or ``adaptive`` differ per
    parameter (e.g. per parameter group): ``ε_i = ρ_i · d_i / ‖d‖`` for the direction d.

    Args:
        params: The perturbed parameters w.
        grads: ∇L(w) for each of them (any common scale: ε does not depend on it, so loss-scaled
            fp16 gradients may be passed as they are).
        rho: The radius ρ ≥ 0, or one radius per parameter.
        adaptive: ASAM's ε = ρ T² g / ‖T g‖, for all parameters or one flag per parameter.
        optimizer: The base optimizer, needed for ``precondition="adam"``.
        precondition: ``None`` or ``"adam"`` (ε = ρ P g / ‖P g‖, so ‖ε‖ = ρ).

    Returns:
        ε per parameter; for FSDP2-sharded parameters, this process's slice of it (add it to
        :func:`lit_bar.algorithms.sharded.local` of the parameter).
    """
    validate_precondition(precondition)
    flags = [bool(adaptive)] * len(params) if isinstance(adaptive, bool) else [bool(a) for a in adaptive]
    check_exclusive(any(flags), precondition)
    group = shard_group([*params, *grads])  # FSDP2: local slices, one scalar all-reduce per norm
    owners, params = params, [local(p) for p in params]
    # Widen half-precision gradients to float32; float32 and float64 stay as they are.
    grads = [local(g).float() if g.is_floating_point() and g.dtype.itemsize < 4 else local(g) for g in grads]
    if any(flags):
        direction, norm = _adaptive_direction(params, grads, flags, group)
    elif precondition == "adam":
        if optimizer is None:
            raise ValueError("precondition='adam' needs the base optimizer")
        direction = adam_preconditioned(owners, grads, optimizer)
        norm = _norm(direction, group)
    else:
        direction = grads
        norm = _norm(grads, group)
    ok = torch.isfinite(norm) & (norm > 0)
    inverse = torch.where(ok, 1.0 / norm.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    eps = torch._foreach_mul(direction, inverse)
    if isinstance(rho, int | float):
        torch._foreach_mul_(eps, float(rho))
    else:
        torch._foreach_mul_(eps, [float(r) for r in rho])
    for e in eps:  # only non-finite gradients can leave NaN here (inf · 0); ε must be 0 then
        e.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return [e.to(p.dtype) for e, p in zip(eps, params, strict=True)]


def _adaptive_direction(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    flags: Sequence[bool],
    group: torch.distributed.ProcessGroup | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """ASAM's direction T² g and norm ‖T g‖, T = |w| where the flag is set and ``w.ndim >= 2``, else I."""
    mats = [i for i, (p, flag) in enumerate(zip(params, flags, strict=True)) if flag and p.ndim >= 2]
    scale = [params[i].detach().abs().to(grads[i].dtype) for i in mats]
    scaled = list(grads)
    if mats:
        for i, value in zip(mats, torch._foreach_mul([grads[i] for i in mats], scale), strict=True):
            scaled[i] = value  # T g
    norm = _norm(scaled, group)
    direction = list(scaled)
    if mats:
        for i, value in zip(mats, torch._foreach_mul([scaled[i] for i in mats], scale), strict=True):
            direction[i] = value  # T² g
    return direction, norm


@torch.no_grad()
def move_to_perturbed(params: Sequence[torch.Tensor], eps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """w ← w + ε in place; returns the exact copies of w that :func:`restore_weights` puts back.

    The autocast weight cache is cleared: a forward inside the same autocast region must cast
    w + ε, not a cached copy of w. The one place both SAM front ends (the engine and the plain-loop
    :class:`lit_bar.optim.SAM`) perturb the weights.
    """
    saved = [p.detach().clone() for p in params]
    torch._foreach_add_(list(params), list(eps))
    torch.clear_autocast_cache()
    return saved


@torch.no_grad()
def restore_weights(params: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    """w ← the copies :func:`move_to_perturbed` saved (bitwise); the autocast cache cleared again."""
    torch._foreach_copy_(list(params), list(saved))
    torch.clear_autocast_cache()
