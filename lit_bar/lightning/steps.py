"""How long a run is, in optimizer steps or epochs, read before training without breaking resume.

Every run-length schedule (a warm-up LR schedule, BAR's μ decay) needs the number of training
batches before the first step, and Lightning only knows it after it has built the training loader.
``trainer.estimated_stepping_batches`` builds it early: from ``configure_optimizers`` or
``on_fit_start``, i.e. *before* a checkpoint's loop state is restored. Lightning's fit loop then
keeps that loader and never loads the checkpoint's loader position into it (Lightning issue
#20550, present in 2.6.6: ``_FitLoop.setup_data`` returns early), so a resumed run silently
re-reads its epoch from the start. :func:`batches_per_epoch` therefore releases a loader that it
had to build: the fit loop builds its own after the restore and loads its position as usual.

:func:`is_logging_step` is lit_bar's one logging clock under Lightning, in optimizer steps.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl

from lit_bar.lightning.compat import has_training_loader, release_training_loader

__all__ = ["batches_per_epoch", "is_logging_step", "optimizer_steps", "run_length", "total_optimizer_steps"]

_NO_LENGTH = (
    "the run has no finite length (max_steps=-1 and max_epochs=-1, or a training set without len()), "
    "so a schedule over the whole run cannot be built: set max_steps, or pass total_steps"
)


def batches_per_epoch(trainer: pl.Trainer) -> float:
    """Training batches per epoch (after ``limit_train_batches``); ``inf`` when the loader has no length.

    Builds the training loader if the fit loop has none yet, and releases it again (see the module
    docstring), so that a checkpoint's loader position is still restored afterwards.
    """
    if has_training_loader(trainer) or trainer.max_epochs == -1:
        return trainer.num_training_batches
    trainer.estimated_stepping_batches  # noqa: B018  (makes the fit loop build the training loader)
    batches = trainer.num_training_batches
    release_training_loader(trainer)  # the fit loop builds it again after the checkpoint's restore
    return batches


def optimizer_steps(trainer: pl.Trainer, accumulate_grad_batches: int) -> int:
    """Total optimizer steps: ⌈batches per epoch / accumulation⌉ × epochs, capped by ``max_steps``.

    Whichever of ``max_epochs`` and ``max_steps`` ends the run first decides, as in the Trainer.

    Raises:
        ValueError: the run has no finite length.
    """
    per_epoch, epochs = batches_per_epoch(trainer), trainer.max_epochs
    total = float("inf")
    if epochs not in (None, -1) and not math.isinf(per_epoch):
        total = math.ceil(per_epoch / accumulate_grad_batches) * max(epochs, 1)
    if trainer.max_steps != -1:
        total = min(total, trainer.max_steps)
    if math.isinf(total):
        raise ValueError(_NO_LENGTH)
    return int(total)


def run_length(trainer: pl.Trainer, accumulate_grad_batches: int, interval: str = "step") -> int:
    """The run's length in the unit a scheduler steps in: optimizer steps, or epochs.

    Epochs are ``max_epochs``, or fewer when ``max_steps`` ends the run first
    (⌈max_steps / optimizer steps per epoch⌉).

    Args:
        trainer: The trainer about to fit.
        accumulate_grad_batches: Micro-batches per optimizer step.
        interval: ``"step"`` or ``"epoch"``.
    """
    if interval == "step":
        return optimizer_steps(trainer, accumulate_grad_batches)
    if interval != "epoch":
        raise ValueError(f"unknown interval {interval!r}; allowed: step, epoch")
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
    if trainer.max_steps != -1:
        per_epoch = batches_per_epoch(trainer)
        if not math.isinf(per_epoch):
            steps_per_epoch = math.ceil(per_epoch / accumulate_grad_batches)
            epochs = min(epochs, math.ceil(trainer.max_steps / steps_per_epoch))
    if math.isinf(epochs):
        raise ValueError(_NO_LENGTH.replace("set max_steps", "set max_epochs"))
    return max(int(epochs), 1)


def total_optimizer_steps(trainer: pl.Trainer, module: pl.LightningModule) -> int:
    """Total optimizer steps: ``SAMModule.estimated_optimizer_steps``, else by the Trainer's accumulation."""
    estimate = getattr(module, "estimated_optimizer_steps", None)
    if callable(estimate):
        return int(estimate())
    return optimizer_steps(trainer, trainer.accumulate_grad_batches)


def is_logging_step(trainer: pl.Trainer, step: int | None = None, every: int | None = None) -> bool:
    """Whether optimizer step ``step`` logs: lit_bar's one logging clock under Lightning.

    The rule: with ``N = trainer.log_every_n_steps``, optimizer step n (counted from 1) logs when
    ``N > 0`` and ``n % N == 0``, or when the Trainer is stopping (``trainer.should_stop``, as
    Lightning's own rule). It counts *optimizer steps*, as Lightning does under automatic
    optimization and as transformers' ``logging_steps`` does (:func:`lit_bar.hf.callback.will_log`):
    with ``accumulate_grad_batches=2`` and ``log_every_n_steps=4`` it logs at optimizer steps 4, 8, ...
    (Lightning's private ``should_update_logs`` counts micro-batches under manual optimization, which
    would be steps 2, 4, 6, 8.) ``SAMModule``'s ``train/*``, ``BalancednessCallback``,
    ``BalancednessMonitor``, ``BiLoRACallback``, ``FiniteCheck`` and the step progress lines all ask here.
    Every logging step is a batch in which Lightning writes the logged values to the loggers
    (optimizer step n ends at micro-batch n·k, and N | n implies N | n·k).

    Args:
        trainer: The Lightning Trainer.
        step: The optimizer step, from 1; ``None``: the step in progress (``trainer.global_step + 1``,
            as read in ``training_step`` and ``on_before_optimizer_step``). After the step (in
            ``on_train_batch_end``) pass ``trainer.global_step``.
        every: ``N`` instead of ``trainer.log_every_n_steps`` (a callback's own cadence).
    """
    every = trainer.log_every_n_steps if every is None else every
    step = trainer.global_step + 1 if step is None else step
    return bool(every) and (step % every == 0 or bool(trainer.should_stop))
