"""``LearningRateMonitor`` that stands down without a logger instead of raising.

Lightning's :class:`lightning.pytorch.callbacks.LearningRateMonitor` raises in ``on_train_start``
when the Trainer has no logger. ``configs/defaults.yaml`` adds this one to every run, and
``configs/debug.yaml`` turns the logger off, so here the missing logger is one info line instead.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor as _LightningLearningRateMonitor
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

__all__ = ["LearningRateMonitor"]


class LearningRateMonitor(_LightningLearningRateMonitor):
    """Lightning's ``LearningRateMonitor``, inactive (one info line) when the Trainer has no logger.

    Args:
        logging_interval: ``"step"``, ``"epoch"`` or ``None`` (the scheduler's own interval).
        log_momentum: Also log the momentum (Adam's β₁).
        log_weight_decay: Also log the weight decay.
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
    ) -> None:
        super().__init__(logging_interval, log_momentum, log_weight_decay)
        self.active = True

    @override
    def on_train_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self.active = bool(trainer.loggers)
        if not self.active:
            rank_zero_info(
                "LearningRateMonitor: the Trainer has no logger, so the learning rate is not logged"
            )
            return
        super().on_train_start(trainer, *args, **kwargs)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.active:
            super().on_train_batch_start(trainer, *args, **kwargs)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.active:
            super().on_train_epoch_start(trainer, *args, **kwargs)
