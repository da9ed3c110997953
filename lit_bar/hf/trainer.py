"""``SAMTrainer``: the transformers ``Trainer`` whose training step is lit_bar's SAM step.

How micro-batches arrive (transformers 5.x, ``Trainer._run_epoch``, read in ``trainer.py``): for
each optimizer step the loop prefetches the window's k batches with ``get_batch_samples``, which
also counts ``num_items_in_batch`` (the non-ignored labels of all k, summed over processes with
``average_tokens_across_devices``), then calls ``training_step(model, inputs, num_items_in_batch)``
once per micro-batch: ``accelerator.gradient_state.sync_gradients`` is true only for the last one,
the others run inside ``accelerator.no_sync(model)``. The stock step backpropagates
``compute_loss(...)`` through ``accelerator.backward`` (loss-scaled under fp16), divided by
``current_gradient_accumulation_steps`` unless the loss is already normalised by
``num_items_in_batch``. After the last micro-batch the loop clips (``accelerator.clip_grad_norm_``
unscales first), calls ``on_pre_optimizer_step``, ``optimizer.step()`` (skipped by the scaler on
non-finite gradients), the scheduler and ``zero_grad``.

``SAMTrainer.training_step`` hands each micro-batch to :class:`lit_bar.engine.SAMEngine` with that
same loss and weight, so it perturbs exactly what the Trainer optimizes::

    micro-batches 1..k−1   ascent only: g += ∇(w_i L_i) (autograd.grad, no all-reduce)
    micro-batch k          ascent; all-reduce g once (several processes); w += ε;
                           descent over all k with their ascent's dropout masks (no_sync but the
                           last); w ← exact saved copy
    then the Trainer       clip, on_pre_optimizer_step, optimizer.step() on the descent gradient

With ``m`` each chunk of m examples of each micro-batch is perturbed on its own. fp16 (GradScaler)
and bf16 come from accelerate; the engine uses the scaler for its ascent and seeds.

Accumulation is exact for every head (k micro-batches = one k-times-larger batch). transformers
skips its 1/k whenever the forward takes ``**kwargs`` (``model_accepts_loss_kwargs``), but BERT's
and RoBERTa's classification heads take ``**kwargs`` and ignore ``num_items_in_batch``: the stock
step is then k times too large. ``SAMTrainer`` instead measures once, on the first micro-batch,
whether the loss divides by the count (:meth:`SAMTrainer._probe_counts_items`), and weights a loss
that does not by 1/k without passing it the count. ``loss_is_scaled_for_ga`` on a subclass overrides.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from transformers import Trainer
from typing_extensions import override

from lit_bar.algorithms.batches import frozen_batchnorm, rng_state, set_rng_state
from lit_bar.engine import SAMEngine
from lit_bar.hf.callback import run_first, will_log
from lit_bar.optim.settings import check_adam

__all__ = ["SAMTrainer"]

#: Names of the engine's statistics in the Trainer's logs (its own ``grad_norm`` is the descent's).
LOG_NAMES = {"grad_norm": "ascent_grad_norm", "sharpness": "sharpness"}


class SAMTrainer(Trainer):
    """A ``transformers.Trainer`` whose training step is SAM (paper Alg. 1; docs/algorithms.md §2, §5).

    Args:
        *args: The ``Trainer``'s arguments (model, args, datasets, collator, ...).
        rho: SAM radius ρ ≥ 0; 0 trains exactly as the plain ``Trainer``.
        adaptive: Adaptive SAM (ASAM): ε = ρ T² g/‖T g‖, T = |w| on weight matrices.
            An optimizer parameter group with its own ``"rho"`` or ``"adaptive"`` key (pass
            ``optimizers=(...)``) uses that for its parameters; ‖g‖ runs over all groups together.
        perturbation: ``"sam"``, or ``"functional"`` (Functional-SAM: the descent pass backpropagates
            the model's ``logits`` at w + ε seeded with the clean ∂L/∂logits; the loss must be a
            function of the returned ``logits``, so with fp16/bf16 pass ``compute_loss_func``).
        precondition: ``None``, or ``"adam"``: ε ∝ P g with the Adam/AdamW optimizer's preconditioner.
        m: m-sharpness: each chunk of ``m`` examples of a micro-batch gets its own ε; ``None``
            perturbs the whole optimizer step's batch (all micro-batches, all processes) at once.
        **kwargs: The ``Trainer``'s keyword arguments.

    Logs, on the Trainer's logging steps, ``ascent_grad_norm`` (‖mean ascent gradient‖ over all
    micro-batches and processes, unscaled) and ``sharpness`` (L(w + ε) − L(w), ``"sam"`` only)
    beside the Trainer's ``loss`` and ``grad_norm`` (the descent gradient's, before clipping).

    Raises:
        ValueError: For a bad SAM argument, or with DeepSpeed, FSDP or ``DataParallel`` (several
            GPUs in one process), which the step does not support.
    """

    def __init__(
        self,
        *args: Any,
        rho: float = 0.05,
        adaptive: bool = False,
        perturbation: Literal["sam", "functional"] = "sam",
        precondition: Literal["adam"] | None = None,
        m: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.sam_engine = SAMEngine(rho, adaptive, m, perturbation, precondition)  # validates first
        super().__init__(*args, **kwargs)
        self._sam_stats: dict[str, torch.Tensor] = {}
        self._counts_items: bool | None = None  # whether compute_loss divides by num_items_in_batch
        self._check_supported()
        for callback in reversed(
            [c for c in self.callback_handler.callbacks if getattr(c, "runs_first", False)]
        ):
            run_first(self, callback)  # BalancednessTrainerCallback ahead of the reporting integrations

    @override
    def add_callback(self, callback: Any) -> None:
        """``Trainer.add_callback``; one marked ``runs_first`` (BAR's) goes first (:func:`run_first`)."""
        super().add_callback(callback)
        added = self.callback_handler.callbacks[-1]
        if getattr(added, "runs_first", False):
            run_first(self, added)

    def _check_supported(self) -> None:
        """Refuse the setups the step does not handle, naming what to use instead."""
        parallelism = getattr(self.accelerator, "parallelism_config", None)
        unsupported = {
            "DeepSpeed": self.is_deepspeed_enabled,
            "FSDP": self.is_fsdp_enabled,
            f"DataParallel over {self.args.n_gpu} GPUs in one process": self.args.n_gpu > 1,
            "context/sequence parallelism": parallelism is not None
            and bool(getattr(parallelism, "cp_enabled", False) or getattr(parallelism, "sp_enabled", False)),
        }
        for name, enabled in unsupported.items():
            if enabled:
                sharded = " (sharded SAM runs under Lightning: lit-bar --trainer.strategy fsdp2)"
                raise ValueError(
                    f"SAMTrainer does not support {name}: use one process per device (DDP: "
                    "`accelerate launch` or `torchrun`), with or without fp16/bf16"
                    + (sharded if name == "FSDP" else "")
                )
        if (
            self.sam_engine.perturbation == "functional"
            and (self.args.fp16 or self.args.bf16)
            and self.compute_loss_func is None
        ):
            raise ValueError(
                "perturbation='functional' with fp16/bf16 needs compute_loss_func=...: accelerate converts "
                "the model's outputs to float32 after the model computed its own loss, so that loss is not "
                "a function of the returned logits; compute_loss_func(outputs, labels, num_items_in_batch) "
                "computes it from them"
            )

    @override
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        self.sam_engine.settings(optimizer.param_groups)  # a group's own rho/adaptive, checked up front
        base = getattr(optimizer, "optimizer", optimizer)
        check_adam(base, self.sam_engine.precondition, "optim='adamw_torch' (or another torch Adam/AdamW)")
        return optimizer

    @override
    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """One micro-batch of the SAM step; returns its loss normalised as the Trainer's own step does."""
        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()
        inputs = dict(self._prepare_inputs(inputs))  # a dict: m-chunks slice every tensor in it
        counted = self._loss_counts_items(model, inputs, num_items_in_batch)
        if not counted:  # a per-micro-batch mean: weight 1/k, and no count for a head that ignores it
            num_items_in_batch = None
        weight = 1.0 if counted else 1.0 / self.current_gradient_accumulation_steps
        last = bool(self.accelerator.gradient_state.sync_gradients)
        logging = self._is_logging_step()
        base = getattr(self.optimizer, "optimizer", self.optimizer)
        loss = self.sam_engine.micro_step(
            _TrainerFrontEnd(self, model, num_items_in_batch),
            inputs,
            self.optimizer.param_groups,  # a group's "rho"/"adaptive" apply to its parameters
            weight,
            last,
            optimizer=base if self.sam_engine.precondition else None,
            module=model,
            logging=logging,
            mean_loss=not counted,
        )
        if last and logging:
            self._sam_stats = {k: v for k, v in self.sam_engine.stats().items() if k in LOG_NAMES}
        return (loss * weight).detach()

    @override
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the last step's SAM statistics to a training log (one device→host copy)."""
        stats, self._sam_stats = self._sam_stats, {}
        if "loss" in logs and stats:
            dtype = functools.reduce(torch.promote_types, (v.dtype for v in stats.values()))
            values = torch.stack([v.detach().to(dtype) for v in stats.values()])
            if self.accelerator.num_processes > 1:  # sharpness is per process: report the mean
                values = self.accelerator.reduce(values, reduction="mean")
            for name, value in zip(stats, values.tolist(), strict=True):
                logs[LOG_NAMES[name]] = value
        super().log(logs, start_time)

    def _loss_counts_items(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None
    ) -> bool:
        """Whether ``compute_loss`` divides by ``num_items_in_batch`` (the window's count), so that the
        micro-batches' losses add up to the window's mean; otherwise each is its own mean (weight 1/k).

        transformers decides this from the signature alone (``model_accepts_loss_kwargs``: the forward
        takes ``**kwargs``), and BERT/RoBERTa classification heads take ``**kwargs`` but ignore the
        count, so the stock step adds k means: a k-fold gradient under accumulation. Here a subclass's
        ``loss_is_scaled_for_ga`` decides if set; else, when a count is passed at all, the first
        micro-batch with a finite non-zero loss decides by measurement (:meth:`_probe_counts_items`).
        """
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        if num_items_in_batch is None or not (self.model_accepts_loss_kwargs or self.compute_loss_func):
            return False
        if self._counts_items is None:
            self._counts_items = self._probe_counts_items(model, inputs, num_items_in_batch)
            if self._counts_items is None:
                return True  # undecided (a zero or non-finite loss): the Trainer's own rule, this once
        return self._counts_items

    def _probe_counts_items(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int
    ) -> bool | None:
        """Compute the micro-batch's loss with the count n and with 2n (no gradient, same dropout
        masks, BatchNorm statistics kept): half the loss means it divides by the count, the same loss
        that it ignores it. Two extra forward passes and one host sync, once per run (per process).
        ``None`` when the loss is zero or not finite (it cannot tell); a ``ValueError`` otherwise."""
        rng = rng_state()
        losses = []
        with torch.no_grad(), frozen_batchnorm(model):
            for count in (num_items_in_batch, 2 * num_items_in_batch):
                set_rng_state(rng)
                with self.compute_loss_context_manager():
                    losses.append(self.compute_loss(model, copy.copy(inputs), num_items_in_batch=count))
        set_rng_state(rng)
        once, twice = torch.stack([loss.detach().float().reshape(()) for loss in losses]).tolist()
        if not math.isfinite(once) or once == 0 or not math.isfinite(twice):
            return None
        ratio = twice / once
        if abs(ratio - 0.5) < 0.05:
            return True
        if abs(ratio - 1.0) < 0.05:
            return False
        raise ValueError(
            f"SAMTrainer: doubling num_items_in_batch changed the loss by a factor {ratio:.3g} (1: the loss "
            "ignores it, 0.5: it divides by it), so the accumulation weight is unknown; set the class "
            "attribute loss_is_scaled_for_ga (True: the loss is normalised over the whole window)"
        )

    def _is_logging_step(self) -> bool:
        """Whether the optimizer step in progress will be logged (``DefaultFlowCallback``'s rule)."""
        return will_log(self.args, self.state)


class _TrainerFrontEnd:
    """:class:`lit_bar.engine.FrontEnd` over a ``Trainer``: its ``compute_loss`` and accelerate."""

    def __init__(
        self, trainer: Trainer, model: nn.Module, num_items_in_batch: torch.Tensor | int | None
    ) -> None:
        self.trainer, self.model, self.num_items_in_batch = trainer, model, num_items_in_batch
        self.world_size = trainer.accelerator.num_processes

    def _compute(self, batch: dict[str, Any], return_outputs: bool) -> Any:
        with self.trainer.compute_loss_context_manager():  # compute_loss may pop "labels": a copy
            return self.trainer.compute_loss(
                self.model,
                copy.copy(batch),
                return_outputs=return_outputs,
                num_items_in_batch=self.num_items_in_batch,
            )

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._compute(batch, return_outputs=False)

    def loss_and_outputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        loss, outputs = self._compute(batch, return_outputs=True)
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if logits is None:
            raise ValueError(
                "perturbation='functional' needs the model's outputs to hold 'logits' (the tensor the loss "
                f"is a function of); got {type(outputs).__name__}"
            )
        return loss, logits

    def outputs(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_and_outputs(batch)[1]

    def scale(self, tensor: torch.Tensor) -> torch.Tensor:
        scaler = self.trainer.accelerator.scaler
        return scaler.scale(tensor) if scaler is not None else tensor

    def backward(self, tensor: torch.Tensor, gradient: torch.Tensor | None = None) -> None:
        if gradient is None:
            self.trainer.accelerator.backward(tensor)  # loss-scaled under fp16
        else:
            tensor.backward(gradient=gradient)  # the seed carries the loss scale already

    def no_sync(self) -> Any:
        return self.trainer.accelerator.no_sync(self.model)
