"""``BalancednessTrainerCallback``: nBAR / oBAR (paper Alg. 2 and 3) inside the transformers ``Trainer``.

Where it runs, in ``Trainer._inner_training_loop`` of transformers 5.x (read in ``trainer.py``), once
per optimizer step, after the last micro-batch of the accumulation window::

    backward of every micro-batch (accumulated; DDP all-reduce on the last)
    accelerator.clip_grad_norm_          unscales the fp16 gradients (GradScaler.unscale_), clips
                                         (max_grad_norm; with 0 it only measures the norm)
    on_pre_optimizer_step                ← BAR here: final, accumulated, unscaled, clipped gradients
    optimizer.step()                     AcceleratedOptimizer: scaler.step (skips non-finite), update
    on_optimizer_step
    lr_scheduler.step()                  unless the scaler skipped the step
    model.zero_grad(); global_step += 1; on_step_end
    _maybe_log_save_evaluate → Trainer.log → log_history.append → on_log (callbacks in list order)

The rule is :class:`lit_bar.algorithms.bar.BAR` (the same object plain loops and
``BalancednessCallback`` use).
Under ``fp16`` a step that the GradScaler will skip (a non-finite gradient) is skipped by BAR too,
through a 0/1 tensor (no host sync): the Trainer itself only knows after ``optimizer.step()``.

Logging: ``Trainer(callbacks=[...])`` puts user callbacks *after* the reporting integrations
(TensorBoard, W&B, ...), and ``Trainer.log`` appends a copy of the logs to ``state.log_history``
before calling ``on_log``. In ``on_log`` this callback adds its values to the logs every *later*
callback receives, and to the ``log_history`` entry just written. So it has to run first:
:func:`run_first` puts it there through the Trainer's own ``pop_callback``/``add_callback``;
:class:`lit_bar.hf.SAMTrainer` does that for every callback marked ``runs_first`` (this one), at
construction and in its ``add_callback``. With a plain ``Trainer`` call ``run_first(trainer)`` once
after building it; without it, integrations listed before the callback do not see ``bar/*`` (a
warning at ``on_train_begin`` says so when ``report_to`` names any).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import IntervalStrategy
from transformers.utils import logging
from typing_extensions import override

from lit_bar.algorithms.bar import BAR, BarStep, finite_gradients, validate_bar_settings
from lit_bar.algorithms.pairs import FactorPair, balancedness, resolve_pairs

__all__ = ["BalancednessTrainerCallback", "run_first"]

logger = logging.get_logger(__name__)


class BalancednessTrainerCallback(TrainerCallback):
    """Balancedness-aware regularisation of the model's scale-invariant pairs (peft LoRA's (A, B)).

    Example::

        trainer = Trainer(model=peft_model, args=args, train_dataset=train,
                          callbacks=[BalancednessTrainerCallback(mode="nbar", mu=1.0)])
        run_first(trainer)  # ahead of the reporting integrations (SAMTrainer does this itself)

    Args:
        mode: ``"nbar"`` (Alg. 2: sign from ‖g_x‖ vs ‖g_y‖, the LoRA default) or ``"obar"`` (Alg. 3).
        mu: μ₀ ≥ 0.
        schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` μ decay over the run.
        total_steps: T for the decaying schedules; ``None`` takes the Trainer's ``state.max_steps``.
        pairs: ``None``: the model's pairs (:func:`lit_bar.algorithms.pairs.module_pairs`: its
            ``factor_pairs()``,
            else its peft LoRA pairs); otherwise ``(x_name, y_name)`` parameter names or
            :class:`lit_bar.FactorPair` objects.

    Logged (every ``logging_steps``): ``bar/abs_balancedness`` (mean |B| over pairs after the last
    BAR update, before that optimizer step, as ``BalancednessCallback`` logs it), ``bar/mu``,
    ``bar/pairs_plus`` and ``bar/pairs_minus`` (pairs with s = +1 / −1 at the last step).
    """

    #: :class:`lit_bar.hf.SAMTrainer` puts callbacks with this mark first (:func:`run_first`).
    runs_first = True

    def __init__(
        self,
        mode: str = "nbar",
        mu: float = 1.0,
        schedule: str = "constant",
        total_steps: int | None = None,
        pairs: Sequence[tuple[str, str]] | Sequence[FactorPair] | None = None,
    ) -> None:
        self.mode, self.mu, self.schedule, self.total_steps = validate_bar_settings(
            mode, mu, schedule, total_steps
        )
        self.pair_spec = list(pairs) if pairs is not None else None
        self.bar: BAR | None = None
        self._last: tuple[BarStep, torch.Tensor | None] | None = None
        self.placed_first = False  # set by run_first

    @override
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs["model"]
        if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
            raise ValueError(
                "BalancednessTrainerCallback under the Trainer's FSDP/DeepSpeed (TrainingArguments fsdp="
                f"{args.fsdp!r}, deepspeed={args.deepspeed!r}) is not supported: it has not been checked "
                "against sharded factors there; train sharded with lit-bar --trainer.strategy fsdp2, "
                "or use DDP"
            )
        pairs = resolve_pairs(model, self.pair_spec, "BalancednessTrainerCallback")
        total = self.total_steps or (state.max_steps if state.max_steps > 0 else None)
        self.bar = BAR(pairs, self.mode, self.mu, self.schedule, total)
        if not self.placed_first and [r for r in (args.report_to or []) if r != "none"]:
            logger.warning(
                f"BalancednessTrainerCallback is not first among the Trainer's callbacks: the reporting "
                f"integrations {list(args.report_to)} will not see bar/* (state.log_history gets them); call "
                "lit_bar.hf.run_first(trainer) after building the Trainer, or use lit_bar.hf.SAMTrainer"
            )
        logger.info(f"BalancednessTrainerCallback: {self.mode} on {len(pairs)} pairs, mu={self.mu}")

    @override
    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        optimizer = kwargs["optimizer"]
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer holds the GradScaler
        keep = finite_gradients(optimizer) if scaler is not None else None  # 0 on the steps it skips
        result = self.bar.apply(optimizer, state.global_step, keep)
        # |B| after BAR, before the optimizer step (as BalancednessCallback logs it): on the device, no
        # sync, and only when this step will be logged (nothing extra on the other steps)
        logged = will_log(args, state)
        self._last = (result, balancedness(self.bar.pairs).abs().mean() if logged else None)

    @override
    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is None or self._last is None or self._last[1] is None or "loss" not in logs:
            return  # training logs of a step whose values were taken only
        values = self.log_values()
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def log_values(self) -> dict[str, float]:
        """The last step's metrics as Python floats (a host sync: called on logging steps only)."""
        last, abs_balancedness = self._last
        numbers = torch.stack(
            [
                abs_balancedness,
                (last.active * (last.signs > 0)).sum().to(abs_balancedness.dtype),
                (last.active * (last.signs < 0)).sum().to(abs_balancedness.dtype),
            ]
        ).tolist()  # one transfer for the three numbers
        return {
            "bar/abs_balancedness": numbers[0],
            "bar/mu": last.mu,
            "bar/pairs_plus": numbers[1],
            "bar/pairs_minus": numbers[2],
        }


def will_log(args: TrainingArguments, state: TrainerState) -> bool:
    """Whether the optimizer step in progress will be logged (transformers' ``DefaultFlowCallback``
    rule, read before ``global_step`` counts it); ``True`` for ``logging_strategy="epoch"`` (known only
    at the epoch's end), ``False`` for ``"no"``. Shared by this callback and ``SAMTrainer``."""
    step = state.global_step + 1
    if step == 1 and args.logging_first_step:
        return True
    if args.logging_strategy != IntervalStrategy.STEPS:
        return args.logging_strategy != IntervalStrategy.NO
    return step % max(int(state.logging_steps), 1) == 0


def run_first(
    trainer: Trainer, callback: TrainerCallback | type[TrainerCallback] = BalancednessTrainerCallback
) -> TrainerCallback:
    """Make ``callback`` the first of ``trainer``'s callbacks; the others keep their order behind it.

    Uses only the Trainer's public ``pop_callback`` / ``add_callback``: every other callback is popped
    and added back, in its order. Call it after building the Trainer and before ``train()``.

    Args:
        trainer: A ``transformers.Trainer``.
        callback: A callback instance (added first if the Trainer does not have it yet), or a callback
            class: the Trainer's instance of it.

    Returns:
        The callback now first.

    Raises:
        ValueError: ``callback`` is a class of which the Trainer has no instance.
    """
    present = list(trainer.callback_handler.callbacks)
    if isinstance(callback, type):
        found = next((c for c in present if isinstance(c, callback)), None)
        if found is None:
            names = [type(c).__name__ for c in present]
            raise ValueError(f"run_first: the Trainer has no {callback.__name__} among its callbacks {names}")
        callback = found
    elif not any(c is callback for c in present):
        Trainer.add_callback(trainer, callback)  # the base method: no subclass re-ordering hook
        present.append(callback)
    for other in present:
        if other is not callback:
            trainer.pop_callback(other)
            Trainer.add_callback(trainer, other)
    if hasattr(callback, "placed_first"):
        callback.placed_first = True
    return callback
