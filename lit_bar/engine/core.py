"""The SAM step (paper Alg. 1), written once for every front end, in pure torch (docs/algorithms.md §7).

One optimizer step over a window of k micro-batches, each with weight w_i in the step's objective
(w_i = 1/k for a per-micro-batch mean loss)::

    ascent   for each micro-batch i:  fork RNG_i;  g += ∇(w_i L_i)       (autograd.grad, no DDP hook)
             [several processes, m unset: all-reduce g once, in g's own dtype]
             [FSDP2: backward into .grad, each micro-batch reduce-scattering its gradient shards]
    perturb  ε = ρ g/‖g‖ (adaptive / preconditioned: lit_bar.optim.perturbation); save w; w += ε
             (a parameter group's own "rho"/"adaptive" keys set ρ and ASAM for its parameters;
             ‖g‖ runs over all groups together, as lit_bar.optim.SAM does; FSDP2: one scalar
             all-reduce of the shards' squared norms, ε on the local shards)
    descent  for each micro-batch i:  replay RNG_i;  backward(w_i L_i(w + ε))
             (Functional-SAM: backward of f_i(w + ε) seeded with the stored clean ∂(w_i L_i)/∂f,
             in the outputs' dtype and already loss-scaled)
             [only the last backward of the window all-reduces]
    restore  w ← saved copy (exact)

The passes are named functions in :mod:`lit_bar.engine.passes`; this module keeps the window. With
``m`` set each chunk of m examples is ascended, perturbed, descended and restored on its own
(m-sharpness, Sec. 4: :meth:`SAMEngine._m_sharpness`), so the result does not depend on devices or
micro-batching. With ρ = 0 each micro-batch is one plain forward/backward. The optimizer step itself
(unscaling, clipping, skipping non-finite steps, schedulers) stays with the front end. The engine
never reads a tensor's value on the host: a window's statistics (:meth:`SAMEngine.stats`) stay 0-d
tensors on the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_map

from lit_bar.algorithms.batches import batch_size, is_batched, rng_state, set_rng_state
from lit_bar.algorithms.sharded import local, shard_group
from lit_bar.engine.front import FrontEnd, all_reduce_sum
from lit_bar.engine.passes import (
    ParamSettings,
    Pending,
    ascend_by_backward,
    ascent_grads,
    descend,
    param_settings,
    perturbed,
)
from lit_bar.engine.window import WindowCheckpoint
from lit_bar.optim.perturbation import global_norm
from lit_bar.optim.settings import SAMSettings

__all__ = ["SAMEngine"]

Params = Sequence[torch.Tensor] | Sequence[dict[str, Any]]


class SAMEngine(WindowCheckpoint):
    """SAM's ascent / perturb / descent / restore over the micro-batches of an optimizer step.

    Args:
        rho, adaptive, m, perturbation, precondition: As :class:`lit_bar.optim.settings.SAMSettings`
            (checked there); ``settings=`` passes a built one instead.
        all_reduce: Sums a list of tensors over processes (used when ``world_size > 1``).
    """

    def __init__(
        self,
        rho: float = 0.05,
        adaptive: bool = False,
        m: int | None = None,
        perturbation: str = "sam",
        precondition: str | None = None,
        all_reduce: Callable[[Sequence[torch.Tensor]], list[torch.Tensor]] = all_reduce_sum,
        *,
        settings: SAMSettings | None = None,
    ) -> None:
        self.config = settings or SAMSettings(rho, adaptive, m, perturbation, precondition)
        self.all_reduce = all_reduce
        self._window: list[Pending] = []
        self._ascent: list[torch.Tensor] | None = None
        self._ascent_mean: list[torch.Tensor] | None = None  # m set: Σ of every chunk's weighted g
        self._sums: dict[str, torch.Tensor] = {}
        self._stats: dict[str, torch.Tensor] = {}
        self._logging = False

    rho = property(lambda self: self.config.rho)
    adaptive = property(lambda self: self.config.adaptive)
    m = property(lambda self: self.config.m)
    perturbation = property(lambda self: self.config.perturbation)
    precondition = property(lambda self: self.config.precondition)

    # ------------------------------------------------------------------ public
    def micro_step(
        self,
        front: FrontEnd,
        batch: Any,
        params: Params,
        weight: float,
        last: bool,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        module: torch.nn.Module | None = None,
        logging: bool = False,
        mean_loss: bool = True,
    ) -> torch.Tensor:
        """Run one micro-batch's share of the step; on the window's ``last`` one, finish it.

        After the last micro-batch the parameters hold w again and ``.grad`` holds the descent
        gradient (loss-scaled as the front end's backward leaves it), ready for the optimizer step.

        Args:
            front: The framework's side (loss, scaling, backward, no-sync).
            batch: The micro-batch.
            params: The perturbed parameters, or the optimizer's ``param_groups``: then the
                parameters that require a gradient, each group's ``"rho"``/``"adaptive"`` (when
                present) replacing the engine's for its parameters.
            weight: This micro-batch's weight in the step's objective (1/k for a mean loss).
            last: Whether this micro-batch ends the window (the optimizer step follows).
            optimizer: The base optimizer (needed for ``precondition="adam"``).
            module: Its BatchNorm running statistics are frozen during the descent pass.
            logging: Whether the step is logged (read on the window's last micro-batch): compute
                the ascent gradient norm (an extra all-reduce with ``m`` and several processes).
            mean_loss: ``batch``'s loss is a mean over its examples, so an m-chunk's loss counts
                with its share of examples; ``False``: losses are already normalised by a count
                over the whole window (transformers' ``num_items_in_batch``), so chunks' losses add.

        Returns:
            The micro-batch's clean loss L(w), detached.
        """
        self._logging = logging  # what the window's last micro-batch says decides
        settings = self.settings(params)
        sharded = settings.sam and shard_group(settings.params) is not None
        if sharded and self.m is not None:
            raise ValueError(
                f"m={self.m} (m-sharpness) under sharded training (FSDP2): a chunk's own ε needs its own "
                "gradient, which FSDP2 only gives through a full backward with a reduce-scatter per "
                "chunk; use m=None (one ε per optimizer step), or --trainer.strategy ddp"
            )
        if not settings.sam:
            loss = self._plain(front, batch, weight, last)
        elif self.m is not None:
            loss = self._m_sharpness(front, batch, settings, weight, last, optimizer, module, mean_loss)
        else:
            loss = self._ascend(front, batch, settings.params, weight, sharded)
            if last:
                self._descend_window(front, settings, optimizer, module, sharded)
        if last:
            self._finish(front, settings.sam)
        return loss

    def settings(self, params: Params) -> ParamSettings:
        """Each perturbed parameter with its ρ and ASAM flag (:func:`.passes.param_settings`)."""
        return param_settings(self.config, params)

    def stats(self) -> dict[str, torch.Tensor]:
        """0-d device tensors of the last finished window: ``loss`` (Σ wᵢ Lᵢ(w)); on logging
        windows with ρ > 0 also ``grad_norm`` (‖mean ascent gradient‖, unscaled, over all
        processes) and, for ``perturbation="sam"``, ``sharpness`` (Σ wᵢ (Lᵢ(w + ε) − Lᵢ(w)))."""
        return dict(self._stats)

    # ------------------------------------------------------------------ bookkeeping
    def _add(self, key: str, value: torch.Tensor) -> None:
        value = value.detach()
        self._sums[key] = value if key not in self._sums else self._sums[key] + value

    def _finish(self, front: FrontEnd, sam: bool) -> None:
        stats = {"loss": self._sums["clean"]}
        if sam and self._logging:
            if self._ascent_mean is not None:
                stats["grad_norm"] = self._mean_norm(front, self._ascent_mean, reduced=False)
            if "perturbed" in self._sums:
                stats["sharpness"] = self._sums["perturbed"] - self._sums["clean"]
            if "grad_norm" in self._sums:
                stats["grad_norm"] = self._sums["grad_norm"]
        self._stats, self._sums, self._ascent_mean = stats, {}, None

    def _mean_norm(self, front: FrontEnd, grads: list[torch.Tensor], reduced: bool) -> torch.Tensor:
        """‖Σ_processes g / world_size‖, unscaled (``reduced``: ``grads`` are already summed)."""
        if front.world_size > 1 and not reduced:
            grads = self.all_reduce(grads)
        unit = front.scale(torch.ones((), device=grads[0].device))
        return global_norm(grads) / (unit * front.world_size)

    # ------------------------------------------------------------------ the three paths
    def _plain(self, front: FrontEnd, batch: Any, weight: float, last: bool) -> torch.Tensor:
        """ρ = 0: one forward/backward (LoRA's cost; BAR's on top of it)."""
        with front.no_sync() if not last else contextlib.nullcontext():
            loss = front.loss(batch)
            front.backward(loss * weight)
        self._add("clean", loss * weight)
        return loss.detach()

    def _ascend(
        self, front: FrontEnd, batch: Any, params: Sequence[torch.Tensor], weight: float, sharded: bool
    ) -> torch.Tensor:
        """One micro-batch's ascent, its descent deferred to the window's end."""
        rng, functional = rng_state(), self.perturbation == "functional"
        if sharded:  # FSDP2: the gradient builds up in .grad, taken out by _descend_window
            loss, seed = ascend_by_backward(front, batch, weight, functional)
        else:
            loss, grads, seed = ascent_grads(front, batch, params, weight, functional)
            if self._ascent is None:
                self._ascent = grads
            else:
                torch._foreach_add_(self._ascent, grads)
        self._window.append(Pending(batch, rng, seed, weight))
        self._add("clean", loss * weight)
        return loss

    def _descend_window(
        self,
        front: FrontEnd,
        settings: ParamSettings,
        optimizer: torch.optim.Optimizer | None,
        module: torch.nn.Module | None,
        sharded: bool,
    ) -> None:
        """ε from the window's ascent gradient, then every micro-batch's descent with its own RNG."""
        if sharded:  # the ascent gradient is in .grad (reduce-scattered, averaged): take it out
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in settings.params]
            for param in settings.params:
                param.grad = None
            if self._logging:
                unit = front.scale(torch.ones((), device=local(grads[0]).device))
                self._add("grad_norm", global_norm(grads) / unit)
        else:
            grads, self._ascent = self._ascent, None
            if front.world_size > 1:
                grads = self.all_reduce(grads)  # ε only needs the direction: the sum is the mean's
            if self._logging:
                self._add("grad_norm", self._mean_norm(front, grads, reduced=True))
        window, self._window = self._window, []
        with perturbed(settings, grads, self.precondition, optimizer, module):
            del grads
            for i, pending in enumerate(window):
                set_rng_state(pending.rng)
                self._descend(front, pending, last=i == len(window) - 1)

    def _m_sharpness(
        self,
        front: FrontEnd,
        batch: Any,
        settings: ParamSettings,
        weight: float,
        last: bool,
        optimizer: torch.optim.Optimizer | None,
        module: torch.nn.Module | None,
        mean_loss: bool,
    ) -> torch.Tensor:
        """m-sharpness (Sec. 4): every chunk of m examples ascended, perturbed, descended, restored alone."""
        size = batch_size(batch)
        starts = range(0, size, self.m)
        loss = None
        for j, start in enumerate(starts):
            chunk = tree_map(lambda t, s=start: t[s : s + self.m] if is_batched(t, size) else t, batch)
            share = min(self.m, size - start) / size if mean_loss else 1.0
            rng = rng_state()
            functional = self.perturbation == "functional"
            chunk_loss, grads, seed = ascent_grads(front, chunk, settings.params, weight * share, functional)
            self._add("clean", chunk_loss * (weight * share))
            if self._ascent_mean is None:  # kept for train/grad_norm: one gradient-sized buffer
                self._ascent_mean = grads
            else:
                torch._foreach_add_(self._ascent_mean, grads)
            with perturbed(settings, grads, self.precondition, optimizer, module):
                del grads
                set_rng_state(rng)
                self._descend(front, Pending(chunk, rng, seed, weight * share), last and j == len(starts) - 1)
            loss = chunk_loss * share if loss is None else loss + chunk_loss * share
        return loss

    def _descend(self, front: FrontEnd, pending: Pending, last: bool) -> None:
        perturbed_loss = descend(front, pending.batch, pending.seed, pending.weight, last)
        if perturbed_loss is not None:
            self._add("perturbed", perturbed_loss * pending.weight)
