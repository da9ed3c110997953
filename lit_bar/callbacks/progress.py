"""``StepProgressBar``: Lightning's progress bar that counts steps, and log lines where there is no terminal.

On a terminal it is Lightning's own bar (rich's when rich is installed, else tqdm's) with two
changes for runs that ``max_steps`` ends: the description no longer reads ``Epoch 0/-2`` (rich
prints ``max_epochs - 1``, and ``max_epochs`` is -1 there), and the bar's metrics show
``step: 12/60``.

When stdout is not a terminal (a log file, SLURM, ``| tee``), a bar draws nothing until the end
(rich) or fills the file with carriage returns (tqdm). There the bar stays off and each logging
step (``log_every_n_steps``) prints one line instead, and each validation one more::

    lit-bar: step 10/60 epoch 2 train/loss=0.6931 lr=9.6e-04 elapsed=0:00:21
    lit-bar: validation at step 60: val/accuracy=0.8050 val/loss=0.4312

After ``fit`` (on a terminal too) one line with the final metrics::

    lit-bar: fit done at step 60 in 0:01:23: train/loss=0.5012 val/accuracy=0.8050

What a line shows is what the module logged for the loggers (``trainer.callback_metrics``) and,
unless a ``LearningRateMonitor`` logged it already (``lr-*``), the learning rate the step used (of
each parameter group whose rate differs from the first's); values are read on logging steps only,
where Lightning copies the logged values to the host anyway.
``configs/defaults.yaml`` puts it in every ``lit-bar`` run (``--trainer.enable_progress_bar false``
removes it).
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from typing_extensions import override

from lit_bar.lightning.compat import RICH_AVAILABLE
from lit_bar.lightning.steps import is_logging_step

__all__ = ["StepProgressBar", "format_metrics"]

_Bar = RichProgressBar if RICH_AVAILABLE else TQDMProgressBar
PREFIX = "lit-bar:"


def format_metrics(metrics: dict[str, Any]) -> str:
    """``name=value`` pairs, sorted by name; tensors and numbers as 4 significant digits."""
    parts = []
    for name in sorted(metrics):
        value = metrics[name]
        if hasattr(value, "numel"):
            if value.numel() != 1:
                continue
            value = value.item()
        parts.append(f"{name}={value:.4g}" if isinstance(value, int | float) else f"{name}={value}")
    return " ".join(parts)


class StepProgressBar(_Bar):
    """Lightning's progress bar on a terminal (with the step count under ``max_steps``); elsewhere one
    line per logging step; and the final metrics after ``fit``.

    Args:
        lines: Print lines instead of drawing a bar; ``None`` decides by whether stdout is a terminal.
        refresh_rate: Redraw the bar every this many batches (0 disables the bar, not the lines).
        leave: Leave each epoch's finished bar on screen.
    """

    def __init__(self, lines: bool | None = None, refresh_rate: int = 1, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.lines = lines
        self._printing = False
        self._start = time.monotonic()
        self._rates: list[float] = []
        self._printed_step = 0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._printing = not sys.stdout.isatty() if self.lines is None else self.lines
        if self._printing:
            super().disable()
        if not trainer.is_global_zero:
            self._printing = False

    @override
    def enable(self) -> None:
        if not self._printing:  # lines mode keeps the bar off (the Tuner re-enables bars after its runs)
            super().enable()

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        if trainer.max_steps > 0 and trainer.training:
            items["step"] = f"{trainer.global_step}/{trainer.max_steps}"
        return items

    def _get_train_description(self, current_epoch: int) -> str:
        """The rich bar's description: ``Epoch e/last`` only when ``max_epochs`` bounds the run."""
        description = f"Epoch {current_epoch}"
        if trainer_max_epochs(self.trainer) > 0:
            description += f"/{self.trainer.max_epochs - 1}"
        return f"{description:{len(self.validation_description)}}"

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = time.monotonic()
        self._printed_step = trainer.global_step  # lines for the optimizer steps taken from here on

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self._printing and trainer.optimizers:  # the rates this batch steps with (host floats)
            self._rates = [float(group["lr"]) for group in trainer.optimizers[0].param_groups]

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # once per logging optimizer step (lit_bar's one logging clock, as SAMModule's train/*)
        stepped = trainer.global_step != self._printed_step
        if self._printing and stepped and is_logging_step(trainer, trainer.global_step):
            self._printed_step = trainer.global_step
            step = f"step {trainer.global_step}" + (f"/{trainer.max_steps}" if trainer.max_steps > 0 else "")
            train = {k: v for k, v in trainer.callback_metrics.items() if not k.startswith(("val", "test"))}
            fields = [step, f"epoch {trainer.current_epoch}", format_metrics(train)]
            rates = "" if any(k.startswith("lr-") for k in train) else _learning_rates(self._rates)
            fields += [rates, f"elapsed={self._elapsed()}"]
            print(" ".join([PREFIX, *(f for f in fields if f)]), flush=True)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._printing and trainer.state.fn == "fit" and not trainer.sanity_checking:
            val = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val")}
            print(f"{PREFIX} validation at step {trainer.global_step}: {format_metrics(val)}", flush=True)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)  # the bar is gone before the line is printed
        if stage == "fit" and trainer.is_global_zero:  # Lightning tears down only a fit that ended
            metrics = format_metrics(dict(trainer.callback_metrics)) or "(nothing logged)"
            print(
                f"{PREFIX} fit done at step {trainer.global_step} in {self._elapsed()}: {metrics}", flush=True
            )

    def _elapsed(self) -> str:
        return str(timedelta(seconds=round(time.monotonic() - self._start)))


def trainer_max_epochs(trainer: pl.Trainer) -> int:
    """``max_epochs``, or -1 when only ``max_steps`` (or nothing) bounds the run."""
    return trainer.max_epochs if trainer.max_epochs is not None else -1


def _learning_rates(rates: list[float]) -> str:
    """``lr=...`` of the first parameter group, and ``lr<i>=...`` of the groups whose rate differs."""
    if not rates:
        return ""
    shown = [f"lr={rates[0]:.2e}"] + [f"lr{i}={r:.2e}" for i, r in enumerate(rates[1:], 1) if r != rates[0]]
    return " ".join(shown)


def drop_when_bars_are_off(trainer_config: Any) -> None:
    """Remove ``StepProgressBar`` from a ``lit-bar`` trainer config that sets ``enable_progress_bar: false``.

    ``configs/defaults.yaml`` adds the bar to every run, and Lightning refuses a progress bar callback
    together with ``enable_progress_bar=False``; the flag wins.
    """
    if trainer_config.get("enable_progress_bar") is not False:
        return
    names = {f"{StepProgressBar.__module__}.{StepProgressBar.__name__}", "lit_bar.callbacks.StepProgressBar"}
    callbacks = trainer_config.get("callbacks") or []
    trainer_config.callbacks = [c for c in callbacks if getattr(c, "class_path", None) not in names]
