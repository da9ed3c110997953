"""Functional-SAM for plain PyTorch loops, on top of :class:`lit_bar.optim.SAM` (docs/algorithms.md §5).

SAM descends with ∇L(w + ε). Functional-SAM keeps SAM's ε but descends with the vector–Jacobian
product of the network's outputs at the perturbed point and the *clean, detached* gradient of the
loss with respect to the outputs::

    g̃ = J_f(w + ε)ᵀ · ∂L/∂f |_{f(w)}

so only the curvature of the function f moves the descent direction, not the curvature of the loss
in the logits. It costs what SAM costs: one forward/backward at w, one at w + ε (seeded with the
stored ∂L/∂f, never a double backward)::

    outputs = model(x)                                   # f(w)
    out_grad = clean_backward(loss_fn(outputs, y), outputs)   # .grad = ∇L(w); returns ∂L/∂f(w)
    opt.first_step(zero_grad=True)                       # w ← w + ε,  ε = ρ g/‖g‖ (or P g/‖P g‖)
    functional_backward(model(x), out_grad)              # .grad = J_f(w + ε)ᵀ · ∂L/∂f(w)
    opt.second_step(zero_grad=True)                      # w ← saved w; base optimizer step

or, in one call, :func:`functional_sam_step`. With a ``GradScaler`` pass the scaled loss to
:func:`clean_backward`: ∂L/∂f is then scaled by the same factor, so the descent gradients come out
scaled as the scaler expects; then ``opt.second_step(scaler=scaler)`` and ``scaler.update()``
(:func:`functional_sam_step` takes ``scaler=`` and does the first two). The whole step may sit in
one ``torch.autocast`` region: :class:`SAM` clears autocast's weight cache when it moves w. Pure
torch (no Lightning); :class:`lit_bar.SAMModule` does the same inside its training step with
``perturbation="functional"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lit_bar.optim.sam import SAM

__all__ = ["Outputs", "clean_backward", "functional_backward", "functional_sam_step"]

Outputs = torch.Tensor | Sequence[torch.Tensor]
"""The network outputs the loss is taken of: one tensor (logits) or a sequence of tensors."""


def _as_list(outputs: Outputs) -> list[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def clean_backward(loss: torch.Tensor, outputs: Outputs) -> list[torch.Tensor]:
    """Backward ``loss`` at the clean point w, and return the detached ∂L/∂f of each output.

    One backward pass: it fills ``.grad`` of the parameters with ∇L(w) (which
    :meth:`SAM.first_step` turns into ε) and, on the way, yields the gradient with respect to
    ``outputs`` (Functional-SAM's seed for the descent pass).

    Args:
        loss: The scalar loss at w, computed from ``outputs`` (scaled by a ``GradScaler`` or not).
        outputs: The tensor(s) f(w) that ``loss`` was computed from, still attached to the graph.

    Returns:
        ∂L/∂f for each output tensor, detached (zeros for an output the loss does not use).

    Raises:
        ValueError: If an output does not require grad (it was computed without autograd).
    """
    tensors = _as_list(outputs)
    for i, out in enumerate(tensors):
        if not out.requires_grad:
            raise ValueError(f"output {i} does not require grad: compute it with autograd enabled, from w")
        out.retain_grad()
    loss.backward()
    return [
        out.grad.detach().clone()
        if out.grad is not None
        else torch.zeros_like(out, memory_format=torch.preserve_format)
        for out in tensors
    ]


def functional_backward(outputs: Outputs, out_grads: Sequence[torch.Tensor]) -> None:
    """Accumulate J_f(w + ε)ᵀ · ∂L/∂f(w) into the parameters' ``.grad`` (Functional-SAM's descent).

    Args:
        outputs: The tensor(s) f(w + ε), computed on the same batch (and dropout masks) as the
            clean pass, in the same order as there.
        out_grads: What :func:`clean_backward` returned for that batch.

    Raises:
        ValueError: If the number or shapes of ``outputs`` differ from those of ``out_grads``.
    """
    tensors = _as_list(outputs)
    if len(tensors) != len(out_grads):
        raise ValueError(f"got {len(tensors)} outputs but {len(out_grads)} stored output gradients")
    for i, (out, grad) in enumerate(zip(tensors, out_grads, strict=True)):
        if out.shape != grad.shape:
            raise ValueError(
                f"output {i} has shape {tuple(out.shape)} at w + ε but {tuple(grad.shape)} at w: "
                "the descent pass must see the same batch"
            )
    # One backward through f(w + ε) seeded with the clean ∂L/∂f — a VJP, no double backward.
    torch.autograd.backward(
        tensors, grad_tensors=[g.to(out.dtype) for g, out in zip(out_grads, tensors, strict=True)]
    )


def functional_sam_step(
    optimizer: SAM,
    compute_outputs: Callable[[], Outputs],
    loss_from_outputs: Callable[[Outputs], torch.Tensor],
    same_randomness: bool = True,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One Functional-SAM step: clean pass, ε, functional descent pass, base optimizer step.

    Args:
        optimizer: A :class:`lit_bar.optim.SAM` (plain or ``precondition="adam"``: preconditioned
            Functional-SAM).
        compute_outputs: Runs the network on the step's batch and returns f (called twice: at w
            and at w + ε).
        loss_from_outputs: The scalar loss of the outputs on the step's batch.
        same_randomness: Replay the CPU/CUDA random state for the second pass, so both passes draw
            the same dropout masks; the stream afterwards is where one pass leaves it.
        scaler: A ``GradScaler`` (fp16): the clean loss is scaled before its backward, so the seed
            ∂L/∂f and the descent gradients carry the scale, and the base optimizer steps through
            ``scaler.step`` (unscaled; skipped if not finite). Call ``scaler.update()`` after.

    Returns:
        The loss at w, detached.
    """
    optimizer.zero_grad(set_to_none=True)
    before = _rng_state() if same_randomness else None
    outputs = compute_outputs()
    loss = loss_from_outputs(outputs)
    out_grads = clean_backward(loss if scaler is None else scaler.scale(loss), outputs)
    del outputs
    optimizer.first_step(zero_grad=True)
    after = _rng_state() if same_randomness else None
    if before is not None:
        _set_rng_state(before)
    functional_backward(compute_outputs(), out_grads)
    if after is not None:
        _set_rng_state(after)
    optimizer.second_step(zero_grad=True, scaler=scaler)
    return loss.detach()


def _rng_state() -> tuple[torch.Tensor, Any]:
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, Any]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
