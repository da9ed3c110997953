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
    return int(math.ceil(trainer.estimated_stepping_batches))
