"""SAM's ascent step ε, in its plain, adaptive and preconditioned forms (ALGORITHMS.md §2, §5).

    SAM (Alg. 1)           ε = ρ · g / ‖g‖
    ASAM (Kwon et al.)     ε = ρ · T² g / ‖T g‖,  T = diag(|w|) on weight matrices, T = I on
                           1-D tensors (biases, norm gains), whose magnitudes say nothing of scale
    preconditioned (002)   ε = ρ · P g / ‖P g‖,   P = diag(1 / (√v̂ + ε_adam)) from Adam's state

Norms run over every perturbed tensor together, with ``torch._foreach_*``; a zero or non-finite
norm gives ε = 0 (no division by zero, and no NaN copied into the weights). Pure torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["PRECONDITIONERS", "adam_preconditioned", "global_norm", "sam_perturbation", "validate_precondition"]

PRECONDITIONERS = ("adam",)


def validate_precondition(precondition: str | None) -> str | None:
    """Return ``precondition`` if it is ``None`` or a known name, else raise ``ValueError``."""
    if precondition is not None and precondition not in PRECONDITIONERS:
        raise ValueError(f"unknown preconditioner {precondition!r}; allowed: None, {', '.join(PRECONDITIONERS)}")
    return precondition


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖(t₁, …, t_n)‖₂ over all tensors together, in float32, as a 0-d tensor on the first one's device."""
    device = tensors[0].device
    norms = torch._foreach_norm(list(tensors))
    return torch.linalg.vector_norm(torch.stack([n.float().to(device) for n in norms]))


def adam_preconditioned(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer
) -> list[torch.Tensor]:
    """P·g with P = diag(1 / (√v̂ + ε_adam)) read from an Adam/AdamW ``optimizer``'s state (§5).

    v̂ is the bias-corrected second moment ``exp_avg_sq / (1 − β₂^t)``; a parameter the optimizer
    has not stepped yet has P = I. ``params`` must belong to ``optimizer``.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = list(grads)
    idx, vs, steps, eps, beta2 = [], [], [], [], []
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            continue
        group = group_of[id(p)]
        idx.append(i)
        vs.append(state["exp_avg_sq"])
        steps.append(torch.as_tensor(state["step"], dtype=torch.float32).to(p.device))
        eps.append(group["eps"])
        beta2.append(group["betas"][1])
    if not idx:
        return out
    device = vs[0].device
    bias_correction = 1.0 - torch.tensor(beta2, device=device) ** torch.stack([s.to(device) for s in steps])
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, bias_correction.sqrt().unbind())
    torch._foreach_add_(denom, eps)
    scaled = torch._foreach_div([grads[i] for i in idx], denom)
    for i, value in zip(idx, scaled, strict=True):
        out[i] = value
    return out


@torch.no_grad()
def sam_perturbation(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    rho: float,
    adaptive: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    precondition: str | None = None,
) -> list[torch.Tensor]:
    """Return ε for each of ``params`` from their ascent gradients ``grads`` (Alg. 1, §2, §5).

    Args:
        params: The perturbed parameters w.
        grads: ∇L(w) for each of them (any common scale: ε does not depend on it, so loss-scaled
            fp16 gradients may be passed as they are).
        rho: The radius ρ ≥ 0.
        adaptive: ASAM's ε = ρ T² g / ‖T g‖.
        optimizer: The base optimizer, needed for ``precondition="adam"``.
        precondition: ``None`` or ``"adam"`` (ε = ρ P g / ‖P g‖, so ‖ε‖ = ρ).
    """
    validate_precondition(precondition)
    if adaptive and precondition is not None:
        raise ValueError("adaptive=True and precondition are exclusive: choose one way to shape ε")
    grads = [g.float() if g.dtype != torch.float32 and g.is_floating_point() else g for g in grads]
    if adaptive:
        scale = [p.detach().abs().to(g.dtype) if p.ndim >= 2 else None for p, g in zip(params, grads, strict=True)]
        mats = [i for i, s in enumerate(scale) if s is not None]
        scaled = list(grads)
        for i, value in zip(mats, torch._foreach_mul([grads[i] for i in mats], [scale[i] for i in mats]), strict=True):
            scaled[i] = value  # T g
        norm = global_norm(scaled)
        direction = list(scaled)
        for i, value in zip(mats, torch._foreach_mul([scaled[i] for i in mats], [scale[i] for i in mats]), strict=True):
            direction[i] = value  # T² g
    elif precondition == "adam":
        if optimizer is None:
            raise ValueError("precondition='adam' needs the base optimizer")
        direction = adam_preconditioned(params, grads, optimizer)
        norm = global_norm(direction)
    else:
        direction = grads
        norm = global_norm(grads)
    ok = torch.isfinite(norm) & (norm > 0)
    factor = torch.where(ok, rho / norm.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    eps = torch._foreach_mul(direction, factor)
    for e in eps:  # only non-finite gradients can leave NaN here (inf · 0); ε must be 0 then
        e.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return [e.to(p.dtype) for e, p in zip(eps, params, strict=True)]
