"""How long a run is, in optimizer steps, for either optimization mode (no per-module guessing)."""

from __future__ import annotations

import math

import lightning.pytorch as pl

__all__ = ["total_optimizer_steps"]


def total_optimizer_steps(trainer: pl.Trainer, module: pl.LightningModule) -> int:
    """Total optimizer steps: ``SAMModule.estimated_optimizer_steps`` or the Trainer's estimate."""
    estimate = getattr(module, "estimated_optimizer_steps", None)
    if callable(estimate):
        return int(estimate())
    steps = trainer.estimated_stepping_batches
    if math.isinf(steps):
        raise ValueError(
            "the run has no finite length (max_steps=-1 and max_epochs=-1, or a training set without len()), "
            "so a schedule over the whole run cannot be built: set max_steps, or pass total_steps"
        )
    return math.ceil(steps)
