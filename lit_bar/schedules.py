"""Learning-rate schedules that need the run's total number of optimizer steps.

``LRSchedulerCallable`` factories only receive the optimizer, so a schedule built with
``total_steps=None`` is completed by :class:`lit_bar.SAMModule` once the trainer knows the length of
the run (``SAMModule.estimated_optimizer_steps``).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupLinearDecay"]


class WarmupLinearDecay(LRScheduler):
    """Linear warm-up from 0 to the base LR, then linear decay to 0 (the microsoft/LoRA schedule).

    Args:
        optimizer: The optimizer whose groups' ``lr`` is scheduled.
        warmup_ratio: Fraction of ``total_steps`` spent warming up, in [0, 1).
        warmup_steps: Warm-up steps; overrides ``warmup_ratio`` when given.
        total_steps: Total optimizer steps; ``None`` lets ``SAMModule`` fill it in.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_ratio: float = 0.0,
        warmup_steps: int | None = None,
        total_steps: int | None = None,
    ) -> None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
        if warmup_steps is not None and warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps!r}")
        if None not in (warmup_steps, total_steps) and warmup_steps > total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})")
        self.warmup_ratio = warmup_ratio
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        super().__init__(optimizer)

    def _factor(self, step: int) -> float:
        total = self.total_steps
        if total is None:  # not known yet (before SAMModule fills it in): hold the start value
            warmup = self.warmup_steps if self.warmup_steps is not None else self.warmup_ratio
            return 0.0 if warmup else 1.0
        warmup = self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * total)
        if step < warmup:
            return step / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the run length (``SAMModule`` calls this) and apply the current step's LR at once."""
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps!r}")
        if self.warmup_steps is not None and self.warmup_steps > total_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must not exceed total_steps ({total_steps})"
            )
        self.total_steps = total_steps
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr

    def get_lr(self) -> list[float]:
        factor = self._factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]
