"""``BalancednessTrace``: record the balancedness of a module's pairs at every optimizer step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lit_bar.algorithms.pairs import balancedness

__all__ = ["BalancednessTrace"]


class BalancednessTrace(Callback):
    """Keep ``(step, B)`` after every optimizer step, with step 0 the value before training.

    The module must have a ``pairs()`` method returning its :class:`lit_bar.FactorPair` list (the toy
    modules do); with several pairs the mean of their balancedness is kept.

    Args:
        every: Record every ``every`` optimizer steps (and always step 0).
    """

    def __init__(self, every: int = 1) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.every = every
        self.steps: list[int] = []
        self.values: list[float] = []

    def _record(self, step: int, pl_module: pl.LightningModule) -> None:
        self.steps.append(step)
        self.values.append(float(balancedness(pl_module.pairs()).mean()))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(pl_module, "pairs"):
            raise ValueError(
                f"BalancednessTrace needs a module with a pairs() method, got {type(pl_module).__name__}"
            )
        self.steps, self.values = [], []
        self._record(trainer.global_step, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every == 0 and (not self.steps or self.steps[-1] != step):
            self._record(step, pl_module)
