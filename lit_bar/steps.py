"""How long a run is, in optimizer steps or epochs, read before training without breaking resume.

Every run-length schedule (a warm-up LR schedule, BAR's μ decay) needs the number of training
batches before the first step, and Lightning only knows it after it has built the training loader.
``trainer.estimated_stepping_batches`` builds it early: from ``configure_optimizers`` or
``on_fit_start``, i.e. *before* a checkpoint's loop state is restored. Lightning's fit loop then
keeps that loader and never loads the checkpoint's loader position into it (Lightning issue
#20550, present in 2.6.6: ``_FitLoop.setup_data`` returns early), so a resumed run silently
re-reads its epoch from the start. :func:`batches_per_epoch` therefore releases a loader that it
had to build: the fit loop builds its own after the restore and loads its position as usual.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl

__all__ = ["batches_per_epoch", "optimizer_steps", "run_length", "total_optimizer_steps"]

_NO_LENGTH = (
    "the run has no finite length (max_steps=-1 and max_epochs=-1, or a training set without len()), "
    "so a schedule over the whole run cannot be built: set max_steps, or pass total_steps"
)


def batches_per_epoch(trainer: pl.Trainer) -> float:
    """Training batches per epoch (after ``limit_train_batches``); ``inf`` when the loader has no length.

    Builds the training loader if the fit loop has none yet, and releases it again (see the module
    docstring), so that a checkpoint's loader position is still restored afterwards.
    """
    fit_loop = trainer.fit_loop
    if fit_loop._combined_loader is not None or trainer.max_epochs == -1:
        return trainer.num_training_batches
    trainer.estimated_stepping_batches  # noqa: B018  (makes the fit loop build the training loader)
    batches = trainer.num_training_batches
    if fit_loop._data_fetcher is not None:  # shuts down any worker processes of the early iterator
        fit_loop._data_fetcher.teardown()
        fit_loop._data_fetcher = None
    fit_loop._combined_loader = None  # the fit loop builds it again after the checkpoint's restore
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
