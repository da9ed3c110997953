"""Learning-rate schedules over the whole run, by the names of ``transformers.get_scheduler``.

``LRSchedulerCallable`` factories only receive the optimizer, so a schedule built with
``total_steps=None`` is completed by :class:`lit_bar.SAMModule` once the run's length is known
(``lit_bar.lightning.steps.run_length``: optimizer steps, or epochs with ``lr_scheduler_interval="epoch"``),
before the first step and without the loader-state trap of Lightning #20550. The multipliers are
transformers' own schedule functions (``get_scheduler`` builds them; nothing is re-derived here)::

    model:
      init_args:
        lr_scheduler:
          class_path: lit_bar.lightning.schedules.TransformersSchedule
          init_args: {name: cosine, warmup: 0.06}      # 6 % of the run, rounded up; or warmup: 100 steps
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

__all__ = ["STEP_SCHEDULES", "TransformersSchedule", "WarmupLinearDecay"]

#: ``transformers.get_scheduler`` names whose multiplier is a function of the step alone.
STEP_SCHEDULES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)


def warmup_steps(warmup: float, total_steps: int) -> int:
    """Warm-up steps as ``TrainingArguments.get_warmup_steps``: ``int(warmup)`` steps when ≥ 1, else
    the fraction ``warmup`` of ``total_steps``, rounded up."""
    return int(warmup) if warmup >= 1 else math.ceil(total_steps * warmup)


class TransformersSchedule(LRScheduler):
    """A ``transformers.get_scheduler`` schedule whose length is the run's (filled in by ``SAMModule``).

    Args:
        optimizer: The optimizer whose groups' ``lr`` is scheduled (each group's initial lr is η).
        name: One of :data:`STEP_SCHEDULES` (``linear``, ``cosine``, ``cosine_with_restarts``,
            ``polynomial``, ``constant_with_warmup``, ...).
        warmup: Warm-up as a fraction of the run in [0, 1) (rounded up to whole steps, as
            transformers does), or a whole number of steps ≥ 1.
        total_steps: Length of the run in scheduler steps; ``None`` lets ``SAMModule`` fill it in.
        scheduler_specific_kwargs: Extra arguments of the transformers schedule (``num_cycles``,
            ``power``, ``lr_end``, ``min_lr_rate``, ``num_decay_steps``, ...).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        name: str = "linear",
        warmup: float = 0.0,
        total_steps: int | None = None,
        scheduler_specific_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if name not in STEP_SCHEDULES:
            raise ValueError(
                f"unknown schedule name {name!r}; allowed: {', '.join(STEP_SCHEDULES)} "
                "(for reduce_lr_on_plateau use torch.optim.lr_scheduler.ReduceLROnPlateau)"
            )
        if isinstance(warmup, bool) or not (0 <= warmup < 1 or float(warmup).is_integer()):
            raise ValueError(
                f"warmup must be a fraction of the run in [0, 1) or a whole number of steps, got {warmup!r}"
            )
        self.name = name
        self.warmup = warmup
        self.scheduler_specific_kwargs = dict(scheduler_specific_kwargs or {})
        self._total_steps: int | None = None
        self._multiplier: Any = None
        self._set_total(optimizer, total_steps)
        super().__init__(optimizer)

    @property
    def total_steps(self) -> int | None:
        """The run's length in scheduler steps, ``None`` until known."""
        return self._total_steps

    @total_steps.setter
    def total_steps(self, total_steps: int | None) -> None:
        self._set_total(self.optimizer, total_steps)

    def _set_total(self, optimizer: Optimizer, total_steps: int | None) -> None:
        if total_steps is None:
            self._total_steps, self._multiplier = None, None
            return
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        warmup = warmup_steps(self.warmup, total_steps)
        if warmup > total_steps:
            raise ValueError(f"warmup ({warmup} steps) must not exceed total_steps ({total_steps})")
        self._total_steps = total_steps
        self._multiplier = _transformers_multiplier(
            self.name, optimizer, warmup, total_steps, self.scheduler_specific_kwargs
        )

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the run length (``SAMModule`` calls this) and apply the current step's LR at once."""
        self.total_steps = total_steps
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """As ``LRScheduler``'s, without the multiplier function (rebuilt on load), so that a
        checkpoint holding it loads with ``torch.load(weights_only=True)``."""
        state = super().state_dict()
        state.pop("_multiplier", None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._set_total(self.optimizer, self._total_steps)

    def get_lr(self) -> list[float]:
        if self._multiplier is None:  # length not known yet: hold the start value
            factor = 0.0 if self.warmup else 1.0
        else:
            factor = self._multiplier(self.last_epoch)
        return [base * factor for base in self.base_lrs]


class WarmupLinearDecay(TransformersSchedule):
    """Linear warm-up from 0 to the base LR, then linear decay to 0 (the microsoft/LoRA schedule):
    transformers' ``linear``, under the name the paper configs use.

    Args:
        optimizer: The optimizer whose groups' ``lr`` is scheduled.
        warmup_ratio: Fraction of ``total_steps`` spent warming up, in [0, 1) (rounded up).
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
        if warmup_steps is not None and (not isinstance(warmup_steps, int) or warmup_steps < 0):
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.warmup_ratio = warmup_ratio
        self.warmup_steps = warmup_steps
        super().__init__(
            optimizer, "linear", warmup_ratio if warmup_steps is None else warmup_steps, total_steps
        )


def _transformers_multiplier(
    name: str, optimizer: Optimizer, warmup: int, total_steps: int, kwargs: dict[str, Any]
) -> Any:
    """transformers' multiplier ``step -> factor`` for ``name``, taken from the ``LambdaLR`` that
    ``get_scheduler`` builds over a stand-in optimizer with the same default lr (``polynomial``
    reads it), so the real optimizer is left untouched."""
    from transformers import get_scheduler

    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=optimizer.defaults.get("lr", 1.0))
    try:
        built = get_scheduler(
            name,
            stand_in,
            num_warmup_steps=warmup,
            num_training_steps=total_steps,
            scheduler_specific_kwargs=kwargs,
        )
    except TypeError as error:  # an argument the schedule does not take
        raise ValueError(f"schedule {name!r}: bad scheduler_specific_kwargs {kwargs!r} ({error})") from error
    if not isinstance(built, LambdaLR) or len(built.lr_lambdas) != 1:
        raise ValueError(f"schedule {name!r} is not a step-based multiplier ({type(built).__name__})")
    return built.lr_lambdas[0]
