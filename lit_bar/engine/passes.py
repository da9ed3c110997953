"""The passes of the SAM step by name (paper Alg. 1; docs/algorithms.md §2, §5, §7), in pure torch.

- :func:`ascent_grads`: ∇(w_i L_i) at w with ``torch.autograd.grad`` (no DDP hook, no framework hook),
  and Functional-SAM's seed ∂(w_i L_i)/∂f.
- :func:`ascend_by_backward`: the same under FSDP2, through ``backward`` into ``.grad``.
- :func:`descend`: the backward at w + ε: of the loss, or Functional-SAM's J_f(w + ε)ᵀ · seed.
- :func:`perturbed`: w ← w + ε for the duration, then w ← its exact saved copy (BatchNorm frozen).
- :func:`param_settings`: each perturbed parameter with its group's ρ and ASAM flag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lit_bar.algorithms.batches import frozen_batchnorm, rng_state, set_rng_state
from lit_bar.algorithms.sharded import local
from lit_bar.engine.front import FrontEnd
from lit_bar.optim.perturbation import move_to_perturbed, restore_weights, sam_perturbation
from lit_bar.optim.settings import SAMSettings

__all__ = [
    "ParamSettings",
    "Pending",
    "ascend_by_backward",
    "ascent_grads",
    "descend",
    "param_settings",
    "perturbed",
]


@dataclass
class ParamSettings:
    """The perturbed parameters of a step and each one's ρ and ASAM flag (from its parameter group)."""

    params: list[torch.Tensor]
    rho: list[float]
    adaptive: list[bool]

    @property
    def sam(self) -> bool:
        """Whether any parameter is perturbed (every ρ = 0 is plain training)."""
        return any(r > 0 for r in self.rho)


@dataclass
class Pending:
    """A micro-batch whose descent pass is still to run: its batch, RNG state and FSAM seed."""

    batch: Any
    rng: Any
    seed: torch.Tensor | None
    weight: float


def param_settings(
    config: SAMSettings, params: Sequence[torch.Tensor] | Sequence[dict[str, Any]]
) -> ParamSettings:
    """Each perturbed parameter with its ρ and ASAM flag: a group's ``"rho"``/``"adaptive"``, else
    ``config``'s (read at every step, so a change of a group's value takes effect at once).

    Raises:
        ValueError: A group's bad ``rho`` or ``adaptive``, or ``adaptive=True`` with a preconditioner.
    """
    groups = [g for g in params if isinstance(g, dict)]
    if not groups:
        tensors = list(params)
        return ParamSettings(tensors, [config.rho] * len(tensors), [config.adaptive] * len(tensors))
    settings = ParamSettings([], [], [])
    for i, group in enumerate(groups):
        rho, adaptive = config.for_group(group, i)
        members = [p for p in group["params"] if p.requires_grad]
        settings.params += members
        settings.rho += [rho] * len(members)
        settings.adaptive += [adaptive] * len(members)
    return settings


def ascent_grads(
    front: FrontEnd, batch: Any, params: Sequence[torch.Tensor], weight: float, functional: bool
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """∇(weight · L) at w (loss-scaled) via ``autograd.grad``, and Functional-SAM's seed
    ∂(weight · L)/∂f (loss-scaled, in the outputs' dtype: no copy, no fp16 underflow)."""
    with front.no_sync():
        if functional:
            loss, outputs = front.loss_and_outputs(batch)
            targets = [*params, outputs]
        else:
            loss, targets = front.loss(batch), list(params)
        grads = list(torch.autograd.grad(front.scale(loss * weight), targets, allow_unused=True))
    seed = None
    if functional:
        seed = grads.pop()
        if seed is None:
            raise ValueError(
                "perturbation='functional': the loss does not depend on the outputs the front end "
                "returned, so there is no ∂L/∂f to seed the descent pass with (were the outputs "
                "converted after the loss was computed from them, as accelerate does under fp16/bf16?)"
            )
    grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]
    return loss.detach(), grads, seed


def ascend_by_backward(
    front: FrontEnd, batch: Any, weight: float, functional: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ascent pass under FSDP2, through ``backward``: ``autograd.grad`` cannot differentiate with
    respect to sharded parameters. Returns the clean loss and Functional-SAM's seed.

    Each micro-batch's backward reduce-scatters its gradient (FSDP2 averages over processes) and adds
    the shard to ``.grad``, where the window's ascent gradient builds up. A raw backward, not the
    front end's: no framework hook fires on the ascent (as with ``autograd.grad``). Reduce-scattering
    every micro-batch (instead of holding unsharded gradients with FSDP2's
    ``set_requires_gradient_sync(False)``) costs one reduce-scatter of the trainable gradients per
    micro-batch, small for LoRA, and keeps every state between micro-batches sharded.
    """
    seed = None
    if functional:  # ∂L/∂f first (no parameter involved), then J_fᵀ · seed
        loss, outputs = front.loss_and_outputs(batch)
        (seed,) = torch.autograd.grad(front.scale(loss * weight), outputs, retain_graph=True)
        outputs.backward(seed)
    else:
        loss = front.loss(batch)
        front.scale(loss * weight).backward()
    return loss.detach(), seed


def descend(
    front: FrontEnd, batch: Any, seed: torch.Tensor | None, weight: float, last: bool
) -> torch.Tensor | None:
    """The descent backward at w + ε, all-reducing only when ``last``; returns the perturbed loss
    (``None`` for Functional-SAM, whose descent takes no loss)."""
    with front.no_sync() if not last else contextlib.nullcontext():
        if seed is None:
            loss = front.loss(batch)
            front.backward(loss * weight)
            return loss.detach()
        outputs = front.outputs(batch)  # Functional-SAM: J_f(w + ε)ᵀ · seed, one backward
        if outputs.shape != seed.shape:
            raise ValueError(
                f"the outputs have shape {tuple(outputs.shape)} at w + ε but {tuple(seed.shape)} at w: "
                "the descent pass must see the same batch"
            )
        front.backward(outputs, gradient=seed.to(outputs.dtype))
        return None


@contextlib.contextmanager
def perturbed(
    settings: ParamSettings,
    grads: list[torch.Tensor],
    precondition: str | None,
    optimizer: torch.optim.Optimizer | None,
    module: torch.nn.Module | None,
) -> Iterator[None]:
    """w ← w + ε for the duration, then w ← its exact saved copy; BatchNorm statistics frozen.

    The autocast weight cache is cleared after w += ε and after the restore, so a forward inside one
    autocast region sees the weights it should; the RNG state after the perturbation is restored
    afterwards. FSDP2: ε and the restore touch each process's local slices.
    """
    eps = sam_perturbation(settings.params, grads, settings.rho, settings.adaptive, optimizer, precondition)
    params = [local(p) for p in settings.params]
    saved = move_to_perturbed(params, eps)
    del eps
    after = rng_state()
    try:
        with frozen_batchnorm(module) if module is not None else contextlib.nullcontext():
            yield
    finally:
        restore_weights(params, saved)
        set_rng_state(after)
