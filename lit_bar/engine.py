"""The SAM step (paper Alg. 1), written once for every front end, in pure torch (docs/algorithms.md §7).

One optimizer step over a window of k micro-batches, each with weight w_i in the step's objective
(w_i = 1/k for a per-micro-batch mean loss)::

    ascent   for each micro-batch i:  fork RNG_i;  g += ∇(w_i L_i)       (autograd.grad, no DDP hook)
             [several processes, m unset: all-reduce g once, in g's own dtype]
    perturb  ε = ρ g/‖g‖ (adaptive / preconditioned: lit_bar.optim.perturbation); save w; w += ε
             (a parameter group's own "rho"/"adaptive" keys set ρ and ASAM for its parameters;
             ‖g‖ runs over all groups together, as lit_bar.optim.SAM does)
    descent  for each micro-batch i:  replay RNG_i;  backward(w_i L_i(w + ε))
             (Functional-SAM: backward of f_i(w + ε) seeded with the stored clean ∂(w_i L_i)/∂f,
             in the outputs' dtype and already loss-scaled)
             [only the last backward of the window all-reduces]
    restore  w ← saved copy (exact); the autocast weight cache is cleared after w += ε and after
             the restore, so a forward inside one autocast region sees the weights it should

With ``m`` set each chunk of m examples is ascended, perturbed, descended and restored on its own
(m-sharpness, Sec. 4), so the result does not depend on devices or micro-batching. With ρ = 0 each
micro-batch is one plain forward/backward. The optimizer step itself (unscaling, clipping,
skipping non-finite steps, schedulers) stays with the front end.

What varies between front ends (Lightning's Strategy/Precision, accelerate's Accelerator) comes in
through :class:`FrontEnd`; the engine imports no framework. It never reads a tensor's value on the
host: the statistics of a window (:meth:`SAMEngine.stats`) stay 0-d tensors on the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.distributed
from torch.utils._pytree import tree_map

from lit_bar.optim.perturbation import global_norm, sam_perturbation, validate_precondition
from lit_bar.optim.sam import validate_rho
from lit_bar.sharded import local, shard_group
from lit_bar.step_utils import batch_size, frozen_batchnorm, is_batched, rng_state, set_rng_state

__all__ = ["PERTURBATIONS", "FrontEnd", "SAMEngine", "all_reduce_sum"]

PERTURBATIONS = ("sam", "functional")


class FrontEnd(Protocol):
    """What a framework supplies to :class:`SAMEngine` for one micro-batch's passes.

    Attributes:
        world_size: Number of data-parallel processes (1 without DDP).
    """

    world_size: int

    def loss(self, batch: Any) -> torch.Tensor:
        """The scalar loss of ``batch`` at the current weights (the front end's own normalisation)."""

    def loss_and_outputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the outputs f it is a function of (Functional-SAM's ascent pass)."""

    def outputs(self, batch: Any) -> torch.Tensor:
        """The outputs f of ``batch`` (Functional-SAM's descent pass)."""

    def scale(self, tensor: torch.Tensor) -> torch.Tensor:
        """Loss scaling (fp16 ``GradScaler``); the identity without a scaler."""

    def backward(self, tensor: torch.Tensor, gradient: torch.Tensor | None = None) -> None:
        """Accumulate into ``.grad``: scale and backward ``tensor``, or, with ``gradient`` (which
        already carries the loss scale), ``tensor.backward(gradient)`` without scaling again."""

    def no_sync(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which a backward does not all-reduce (DDP's ``no_sync``)."""


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Sum ``tensors`` over all processes: one ``torch.distributed.all_reduce`` of a flat buffer.

    The buffer has the tensors' promoted dtype (float64 gradients are reduced in float64).
    """
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    parts = flat.split([t.numel() for t in tensors])
    return [p.view_as(t).to(t.dtype) for p, t in zip(parts, tensors, strict=True)]


@dataclass
class _Settings:
    """The perturbed parameters of a step and each one's ρ and ASAM flag (from its parameter group)."""

    params: list[torch.Tensor]
    rho: list[float]
    adaptive: list[bool]

    @property
    def sam(self) -> bool:
        """Whether any parameter is perturbed (every ρ = 0 is plain training)."""
        return any(r > 0 for r in self.rho)


@dataclass
class _Pending:
    """A micro-batch whose descent pass is still to run: its batch, RNG state and FSAM seed."""

    batch: Any
    rng: Any
    seed: torch.Tensor | None
    weight: float


class SAMEngine:
    """SAM's ascent / perturb / descent / restore over the micro-batches of an optimizer step.

    Args:
        rho: SAM radius ρ ≥ 0; 0 means plain training.
        adaptive: ASAM's ε = ρ T² g/‖T g‖.
        m: m-sharpness chunk size, or ``None`` for one ε per optimizer step.
        perturbation: ``"sam"`` or ``"functional"`` (Functional-SAM, docs/algorithms.md §5).
        precondition: ``None`` or ``"adam"`` (ε ∝ P g with the base Adam's preconditioner).
        all_reduce: Sums a list of tensors over processes (used when ``world_size > 1``).
    """

    def __init__(
        self,
        rho: float = 0.05,
        adaptive: bool = False,
        m: int | None = None,
        perturbation: Literal["sam", "functional"] = "sam",
        precondition: Literal["adam"] | None = None,
        all_reduce: Callable[[Sequence[torch.Tensor]], list[torch.Tensor]] = all_reduce_sum,
    ) -> None:
        self.rho = validate_rho(rho)
        self.adaptive = bool(adaptive)
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {perturbation!r}; allowed: {', '.join(PERTURBATIONS)}")
        self.perturbation = perturbation
        self.precondition = validate_precondition(precondition)
        if adaptive and precondition is not None:
            raise ValueError("adaptive=True and precondition are exclusive: choose one way to shape ε")
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"m must be a positive int (examples per perturbation chunk) or None, got {m!r}")
        self.m = m
        self.all_reduce = all_reduce
        self._window: list[_Pending] = []
        self._ascent: list[torch.Tensor] | None = None
        self._ascent_mean: list[torch.Tensor] | None = None  # m set: Σ of every chunk's weighted g
        self._sums: dict[str, torch.Tensor] = {}
        self._stats: dict[str, torch.Tensor] = {}
        self._logging = False

    # ------------------------------------------------------------------ public
    def micro_step(
        self,
        front: FrontEnd,
        batch: Any,
        params: Sequence[torch.Tensor] | Sequence[dict[str, Any]],
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
        elif sharded:
            loss = self._ascend_by_backward(front, batch, weight)
            if last:
                self._descend_window(front, settings, optimizer, module, sharded=True)
        elif self.m is not None:
            loss = self._chunked(front, batch, settings, weight, last, optimizer, module, mean_loss)
        else:
            loss = self._ascend(front, batch, settings.params, weight)
            if last:
                self._descend_window(front, settings, optimizer, module)
        if last:
            self._finish(front, settings.sam)
        return loss

    def settings(self, params: Sequence[torch.Tensor] | Sequence[dict[str, Any]]) -> _Settings:
        """Each perturbed parameter with its ρ and ASAM flag: a group's ``"rho"``/``"adaptive"``, else
        the engine's (read at every step, so a change of a group's value takes effect at once).

        Raises:
            ValueError: A group's ``rho`` that is not a finite number ≥ 0, an ``adaptive`` that is not a
                bool, or ``adaptive=True`` with ``precondition``.
        """
        groups = [g for g in params if isinstance(g, dict)]
        if not groups:
            tensors = list(params)
            return _Settings(tensors, [self.rho] * len(tensors), [self.adaptive] * len(tensors))
        settings = _Settings([], [], [])
        for i, group in enumerate(groups):
            rho, adaptive = group.get("rho", self.rho), group.get("adaptive", self.adaptive)
            try:
                rho = validate_rho(rho)
            except ValueError as err:
                raise ValueError(f"param group {i}: {err}") from None
            if not isinstance(adaptive, bool):
                raise ValueError(f"param group {i}: adaptive must be True or False, got {adaptive!r}")
            if adaptive and self.precondition is not None:
                raise ValueError(
                    f"param group {i}: adaptive=True and precondition={self.precondition!r} are exclusive: "
                    "choose one way to shape ε"
                )
            members = [p for p in group["params"] if p.requires_grad]
            settings.params += members
            settings.rho += [rho] * len(members)
            settings.adaptive += [adaptive] * len(members)
        return settings

    def stats(self) -> dict[str, torch.Tensor]:
        """0-d device tensors of the last finished window: ``loss`` (Σ wᵢ Lᵢ(w)); on logging
        windows with ρ > 0 also ``grad_norm`` (‖mean ascent gradient‖, unscaled, over all
        processes) and, for ``perturbation="sam"``, ``sharpness`` (Σ wᵢ (Lᵢ(w + ε) − Lᵢ(w)))."""
        return dict(self._stats)

    def state_dict(self) -> dict[str, Any]:
        """The window in progress, in plain containers (``torch.load(weights_only=True)`` reads it);
        ``{}`` at a window boundary."""
        if not self._window and not self._sums:
            return {}
        return {
            "window": [
                {"batch": p.batch, "rng": list(p.rng), "seed": p.seed, "weight": p.weight}
                for p in self._window
            ],
            "ascent": self._ascent,
            "ascent_mean": self._ascent_mean,
            "sums": dict(self._sums),
            "logging": self._logging,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Resume a window saved by :meth:`state_dict`, moving its tensors (not RNG states) to ``device``."""

        def to(value: Any) -> Any:
            if device is None:
                return value
            return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)

        if not state:
            self._window, self._ascent, self._ascent_mean, self._sums = [], None, None, {}
            return
        self._window = [
            _Pending(to(p["batch"]), tuple(p["rng"]), to(p["seed"]), p["weight"]) for p in state["window"]
        ]
        self._ascent = to(state["ascent"])
        self._ascent_mean = to(state["ascent_mean"])
        self._sums = to(dict(state["sums"]))
        self._logging = bool(state["logging"])

    # ------------------------------------------------------------------ window bookkeeping
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

    # ------------------------------------------------------------------ the passes
    def _plain(self, front: FrontEnd, batch: Any, weight: float, last: bool) -> torch.Tensor:
        with front.no_sync() if not last else contextlib.nullcontext():
            loss = front.loss(batch)
            front.backward(loss * weight)
        self._add("clean", loss * weight)
        return loss.detach()

    def _ascend(
        self, front: FrontEnd, batch: Any, params: Sequence[torch.Tensor], weight: float
    ) -> torch.Tensor:
        rng = rng_state()
        loss, grads, seed = self._ascent_grads(front, batch, params, weight)
        if self._ascent is None:
            self._ascent = grads
        else:
            torch._foreach_add_(self._ascent, grads)
        self._window.append(_Pending(batch, rng, seed, weight))
        self._add("clean", loss * weight)
        return loss

    def _ascend_by_backward(self, front: FrontEnd, batch: Any, weight: float) -> torch.Tensor:
        """The ascent pass under FSDP2, through ``backward``: ``autograd.grad`` cannot differentiate
        with respect to sharded parameters. Each micro-batch's backward reduce-scatters its
        gradient (FSDP2 averages over processes) and adds the shard to ``.grad``, where the window's
        ascent gradient builds up until :meth:`_descend_window` takes it out. A raw backward, not
        the front end's: no framework hook fires on the ascent (as with ``autograd.grad``).

        Reduce-scattering every micro-batch (instead of holding unsharded gradients with
        ``set_requires_gradient_sync(False)``) costs one reduce-scatter of the trainable gradients
        per micro-batch, small for LoRA, and keeps every state between micro-batches sharded.
        """
        rng = rng_state()
        seed = None
        if self.perturbation == "functional":  # ∂L/∂f first (no parameter involved), then J_fᵀ seed
            loss, outputs = front.loss_and_outputs(batch)
            (seed,) = torch.autograd.grad(front.scale(loss * weight), outputs, retain_graph=True)
            outputs.backward(seed)
        else:
            loss = front.loss(batch)
            front.scale(loss * weight).backward()
        self._window.append(_Pending(batch, rng, seed, weight))
        self._add("clean", loss.detach() * weight)
        return loss.detach()

    def _descend_window(
        self,
        front: FrontEnd,
        settings: _Settings,
        optimizer: torch.optim.Optimizer | None,
        module: torch.nn.Module | None,
        sharded: bool = False,
    ) -> None:
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
        with self._perturbed(settings, grads, optimizer, module):
            del grads
            for i, pending in enumerate(window):
                set_rng_state(pending.rng)
                self._descend(front, pending.batch, pending.seed, pending.weight, last=i == len(window) - 1)

    def _chunked(
        self,
        front: FrontEnd,
        batch: Any,
        settings: _Settings,
        weight: float,
        last: bool,
        optimizer: torch.optim.Optimizer | None,
        module: torch.nn.Module | None,
        mean_loss: bool,
    ) -> torch.Tensor:
        size = batch_size(batch)
        starts = range(0, size, self.m)
        loss = None
        for j, start in enumerate(starts):
            chunk = tree_map(lambda t, s=start: t[s : s + self.m] if is_batched(t, size) else t, batch)
            share = min(self.m, size - start) / size if mean_loss else 1.0
            rng = rng_state()
            chunk_loss, grads, seed = self._ascent_grads(front, chunk, settings.params, weight * share)
            self._add("clean", chunk_loss * (weight * share))
            if self._ascent_mean is None:  # kept for train/grad_norm: one gradient-sized buffer
                self._ascent_mean = grads
            else:
                torch._foreach_add_(self._ascent_mean, grads)
            with self._perturbed(settings, grads, optimizer, module):
                del grads
                set_rng_state(rng)
                self._descend(front, chunk, seed, weight * share, last=last and j == len(starts) - 1)
            loss = chunk_loss * share if loss is None else loss + chunk_loss * share
        return loss

    def _ascent_grads(
        self, front: FrontEnd, batch: Any, params: Sequence[torch.Tensor], weight: float
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """∇(weight · L) at w (loss-scaled) via autograd.grad, and Functional-SAM's seed ∂(weight · L)/∂f."""
        functional = self.perturbation == "functional"
        with front.no_sync():
            if functional:
                loss, outputs = front.loss_and_outputs(batch)
                targets = [*params, outputs]
            else:
                loss, targets = front.loss(batch), list(params)
            grads = list(torch.autograd.grad(front.scale(loss * weight), targets, allow_unused=True))
        seed = None
        if functional:  # loss-scaled, in the outputs' dtype: no copy, no fp16 underflow
            seed = grads.pop()
            if seed is None:
                raise ValueError(
                    "perturbation='functional': the loss does not depend on the outputs the front end "
                    "returned, so there is no ∂L/∂f to seed the descent pass with (were the outputs "
                    "converted after the loss was computed from them, as accelerate does under fp16/bf16?)"
                )
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]
        return loss.detach(), grads, seed

    def _descend(
        self, front: FrontEnd, batch: Any, seed: torch.Tensor | None, weight: float, last: bool
    ) -> None:
        with front.no_sync() if not last else contextlib.nullcontext():
            if seed is None:
                loss = front.loss(batch)
                self._add("perturbed", loss * weight)
                front.backward(loss * weight)
                return
            outputs = front.outputs(batch)  # Functional-SAM: J_f(w + ε)ᵀ · seed, one backward
            if outputs.shape != seed.shape:
                raise ValueError(
                    f"the outputs have shape {tuple(outputs.shape)} at w + ε but {tuple(seed.shape)} at w: "
                    "the descent pass must see the same batch"
                )
            front.backward(outputs, gradient=seed.to(outputs.dtype))

    @contextlib.contextmanager
    def _perturbed(
        self,
        settings: _Settings,
        grads: list[torch.Tensor],
        optimizer: torch.optim.Optimizer | None,
        module: torch.nn.Module | None,
    ) -> Iterator[None]:
        """w ← w + ε for the duration, then w ← its exact saved copy; BatchNorm statistics frozen."""
        eps = sam_perturbation(
            settings.params, grads, settings.rho, settings.adaptive, optimizer, self.precondition
        )
        params = [local(p) for p in settings.params]  # FSDP2: ε and the restore touch the local slices
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_add_(list(params), eps)
        del eps
        torch.clear_autocast_cache()  # autocast's cached low-precision weights are those of w
        after = rng_state()
        try:
            with frozen_batchnorm(module) if module is not None else contextlib.nullcontext():
                yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(list(params), saved)
            torch.clear_autocast_cache()
            set_rng_state(after)
