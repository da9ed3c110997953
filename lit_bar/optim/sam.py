"""SAM as a ``torch.optim.Optimizer`` wrapper for plain PyTorch loops (Alg. 1, Foret et al. 2021).

    loss_fn(model(x)).backward()
    opt.first_step(zero_grad=True)      # w ← w + ε,  ε = ρ g/‖g‖   (paper Alg. 1; docs/algorithms.md §2)
    loss_fn(model(x)).backward()        # g̃ = ∇L(w + ε), same batch
    opt.second_step(zero_grad=True)     # w ← saved w, then the base optimizer steps with g̃

or ``opt.step(closure)``, which evaluates the closure twice (the closure zeroes, forwards and
backwards, as torch's own closure contract says). The weights are restored from an exact saved
copy, not by subtracting ε, so nothing drifts in low precision and a NaN cannot stick.

Mixed precision. Both steps clear ``torch.autocast``'s cache of low-precision weight copies after
they change the weights in place, so the whole SAM step may sit inside one autocast region (the
cache does not see ``w += ε``: without this the second forward would run at w, i.e. plain SGD).
With a ``GradScaler`` (fp16), the loss-scaled gradients go to ``first_step`` as they are (ε = ρ
g/‖g‖ does not depend on the scale; a non-finite g gives ε = 0) and ``second_step(scaler=...)``
restores w and steps through ``scaler.step(base_optimizer)``, which unscales and skips a step
whose gradients are not finite::

    scaler.scale(loss_fn(model(x))).backward()
    opt.first_step(zero_grad=True)
    scaler.scale(loss_fn(model(x))).backward()
    opt.second_step(zero_grad=True, scaler=scaler)
    scaler.update()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from lit_bar.optim.perturbation import move_to_perturbed, restore_weights, sam_perturbation
from lit_bar.optim.settings import check_adam, check_exclusive, validate_precondition, validate_rho

__all__ = ["SAM"]


class SAM(Optimizer):
    """Sharpness-aware minimisation around any base optimizer.

    Args:
        params: Parameters (or parameter groups) to optimise and perturb.
        base_optimizer: An optimizer class or factory, called as ``base_optimizer(param_groups, **kwargs)``.
        rho: Perturbation radius ρ ≥ 0.
        adaptive: Adaptive SAM (ASAM, Kwon et al. 2021); its useful ρ is about 10× SAM's.
        precondition: ``None``, or ``"adam"`` to precondition ε with the base Adam's second moment
            (docs/algorithms.md §5; needs an Adam/AdamW base).
        **kwargs: Passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``, ...).

    ``param_groups`` is the base optimizer's own list, so LR schedulers built on this optimizer
    drive the base optimizer, and ``state_dict``/``load_state_dict`` round-trip the base state.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        precondition: str | None = None,
        **kwargs: Any,
    ) -> None:
        validate_rho(rho)
        validate_precondition(precondition)
        check_exclusive(adaptive, precondition)
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        for group in self.param_groups:  # a group may set its own rho/adaptive
            validate_rho(group["rho"])
            check_exclusive(group["adaptive"], precondition)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        check_adam(self.base_optimizer, precondition)
        self.precondition = precondition
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save w and move to w + ε, from the gradients now in ``.grad``.

        ‖g‖ runs over the parameters of all groups together (Alg. 1); each group scales its part
        of ε by its own ``rho``.
        """
        members = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if members:
            params = [p for p, _ in members]
            eps = sam_perturbation(
                params,
                [p.grad for p in params],
                [group["rho"] for _, group in members],
                adaptive=[group["adaptive"] for _, group in members],
                optimizer=self.base_optimizer,
                precondition=self.precondition,
            )
            for p, w in zip(params, move_to_perturbed(params, eps), strict=True):
                self.state[p]["w"] = w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the w saved by :meth:`first_step` (bitwise), without stepping."""
        params = [p for group in self.param_groups for p in group["params"]]
        saved = [(p, self.state[p].pop("w")) for p in params if "w" in self.state[p]]
        if saved:
            restore_weights([p for p, _ in saved], [w for _, w in saved])

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
        """Restore w exactly and let the base optimizer step with the gradients at w + ε.

        Args:
            zero_grad: Zero the gradients afterwards.
            scaler: The ``GradScaler`` that scaled the losses: the step is then
                ``scaler.step(base_optimizer)`` (unscaled gradients; skipped if any is not finite).
                Call ``scaler.update()`` after, as with any optimizer.
        """
        self.restore()
        if scaler is None:
            self.base_optimizer.step()
        else:
            scaler.step(self.base_optimizer)
        torch.clear_autocast_cache()  # the step moved w in place: no stale cast for a later forward
        self._opt_called = True  # what torch's LR schedulers check, so they do not warn of a missed step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        """One SAM step; ``closure`` must zero the gradients, compute the loss and backward it.

        Returns the loss at w (the closure's first value).
        """
        if closure is None:
            raise ValueError(
                "SAM.step needs a closure (it evaluates the loss twice); or call first_step/second_step "
                "(with a GradScaler: scaler.step(sam) cannot work, call second_step(scaler=scaler) instead)"
            )
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (SAM's saved copy of w exists only inside a step)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (or from a plain base optimizer), keeping
        ``param_groups`` shared; groups without SAM's keys take this optimizer's ``rho``/``adaptive``."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:
            group.setdefault("rho", self.defaults["rho"])
            group.setdefault("adaptive", self.defaults["adaptive"])
