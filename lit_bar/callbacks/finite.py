"""``FiniteCheck``: stop training at the first NaN or infinite loss, weight or batch value.

Lightning's own guards (``EarlyStopping(check_finite=True)``, ``detect_anomaly``) read a monitored
metric or every backward op; a diverged run otherwise trains on to ``max_steps`` and leaves NaN
checkpoints and adapters. ``lit-bar`` always has this callback (``configs/defaults.yaml``).

Design (no host sync in a training step). After every micro-batch, on the device:

    batch    every floating tensor of the batch (inputs, targets) is finite       max |t|, foreach
    loss     the loss the training step returned is finite
    weights  after each optimizer step, every trainable parameter is finite        max |w|, foreach

and the first optimizer step at which any of them failed, with what failed, is kept in two 0-d
device tensors. The host reads them (one copy, and under DDP two tiny all-reduces so every process
stops together with the same message) only where Lightning synchronises anyway: every
``every_n_steps`` optimizer steps (default: the Trainer's ``log_every_n_steps``), before every
checkpoint save and at the end of training. Detection latency: the run stops at most
``every_n_steps − 1`` optimizer steps after the first non-finite value, and no checkpoint is
written and no adapter exported after it (a save in between is refused here, and by
:class:`lit_bar.SAMModule` for ``save_weights_only`` checkpoints; :class:`AdapterExport` refuses
non-finite weights itself). The weights are also checked once at the start of training (a
corrupted checkpoint shows there). Cost per micro-batch: a few small kernels, no host sync.

Mixed precision: under ``16-mixed`` the GradScaler skips a step whose gradients are not finite and
the weights stay as they were: such a skipped step stays a skipped step. A non-finite loss is then
counted only once the scaler's scale has fallen below 1 (the scaler has backed off ~16 times from
its default 65536 without recovering: the loss itself diverges, not its scaled gradient).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lit_bar.algorithms.nonfinite import NonFiniteError, all_finite, float_tensors, non_finite_names
from lit_bar.lightning.steps import is_logging_step

__all__ = ["FiniteCheck", "NonFiniteError"]

_CLEAN = 2**58  # "no failure yet": larger than any step, so the minimum over processes is the first
_BATCH, _LOSS, _WEIGHTS = 1, 2, 4


class FiniteCheck(Callback):
    """Stop at the first non-finite loss, weight or training-batch value, naming the step and cause.

    Raises :class:`lit_bar.algorithms.nonfinite.NonFiniteError` (a ``ValueError``: ``lit-bar`` prints one
    ``lit-bar: error:`` line and exits non-zero) from the training loop; Lightning then ends the run
    without its end-of-fit hooks, so no adapter is exported.

    Args:
        every_n_steps: Read the device-side record every this many optimizer steps; ``None`` takes
            the Trainer's ``log_every_n_steps``; ``0`` reads it only before checkpoint saves and at
            the end of training.
    """

    #: Under a GradScaler a non-finite loss counts only once the loss scale is below this.
    MIN_LOSS_SCALE = 1.0

    def __init__(self, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0
        ):
            raise ValueError(f"every_n_steps must be an int >= 0 or None, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self._step: torch.Tensor | None = None  # first failing optimizer step (1-based), or _CLEAN
        self._code: torch.Tensor | None = None  # what failed then: _BATCH | _LOSS | _WEIGHTS
        self._params: list[torch.Tensor] = []
        self._seen_step = 0
        self._start_step = 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bad = non_finite_names(dict(pl_module.named_parameters()))  # one sync, once
        if bad:
            source = f"the checkpoint {trainer.ckpt_path}" if trainer.ckpt_path else "the initial weights"
            raise NonFiniteError(
                f"{len(bad)} weight tensor(s) are NaN/inf before training starts ({_names(bad)}): {source} "
                "is corrupted; resume from an earlier checkpoint or start over"
            )
        self._params = [p for p in pl_module.parameters() if p.requires_grad and p.is_floating_point()]
        self._step = torch.full((), _CLEAN, dtype=torch.int64, device=pl_module.device)
        self._code = torch.zeros((), dtype=torch.int64, device=pl_module.device)
        self._seen_step = self._start_step = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stepped = trainer.global_step != self._seen_step
        step = trainer.global_step if stepped else trainer.global_step + 1  # the step this batch is part of
        flags = [(_BATCH, all_finite(float_tensors(batch)))]
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            flags.append((_LOSS, self._loss_ok(trainer, loss)))
        if stepped:
            flags.append((_WEIGHTS, all_finite(self._params)))
        self._record(step, flags)
        if stepped:
            self._seen_step = trainer.global_step
            if is_logging_step(trainer, trainer.global_step, self.every_n_steps):  # the step just taken
                self._check(trainer, f"at step {trainer.global_step}")

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._check(trainer, f"before saving a checkpoint at step {trainer.global_step}")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, "at the end of training")

    # ------------------------------------------------------------------ on the device
    def _loss_ok(self, trainer: pl.Trainer, loss: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(loss.detach()).all()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is None:
            return ok
        scale = getattr(scaler, "_scale", None)  # a device tensor (get_scale() would sync)
        if scale is None:
            return torch.ones_like(ok)
        return ok | (scale.to(ok.device) >= self.MIN_LOSS_SCALE).reshape(())

    def _record(self, step: int, flags: list[tuple[int, torch.Tensor]]) -> None:
        """Fold this batch's failures into the record of the first failing step (device ops only)."""
        code = sum(bit * (~ok).to(device=self._code.device, dtype=torch.int64) for bit, ok in flags)
        take = (code > 0) & ((self._step == _CLEAN) | (self._step == step))
        self._code = torch.where(take, self._code | code, self._code)
        self._step = torch.where(take, step, self._step)

    # ------------------------------------------------------------------ on the host
    def _check(self, trainer: pl.Trainer, where: str) -> None:
        """Raise if any process recorded a failure: the earliest step over processes, and what failed
        then on any of them (two small all-reduces under DDP, so every process raises the same error)."""
        if self._step is None:
            return
        first = trainer.strategy.reduce(self._step.clone(), reduce_op="min")
        mine = torch.where(self._step == first, self._code, 0)
        bits = torch.stack([(mine >> i) & 1 for i in range(3)])  # one flag per _BATCH, _LOSS, _WEIGHTS
        bits = trainer.strategy.reduce(bits, reduce_op="max")  # max of 0/1 flags: an OR over processes
        value = int(first * 8 + sum(bits[i] << i for i in range(3)))  # the one host sync
        if value >= _CLEAN * 8:
            return
        raise NonFiniteError(self._message(trainer, value // 8, value % 8, where))

    def _message(self, trainer: pl.Trainer, step: int, code: int, where: str) -> str:
        what = [
            text
            for bit, text in (
                (_BATCH, "the training batch (inputs or targets)"),
                (_LOSS, "the loss"),
                (_WEIGHTS, "the trainable weights"),
            )
            if code & bit
        ]
        resumed = trainer.ckpt_path is not None and step == self._start_step + 1
        lr = _learning_rate(trainer)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if code & _BATCH:
            cause = "NaN/inf values in the data (e.g. regression labels): fix or drop those rows"
        elif scaler is not None and code == _LOSS:
            cause = (
                "in 16-mixed precision the loss stayed NaN/inf while the GradScaler backed off below "
                f"{self.MIN_LOSS_SCALE:g}: an fp16 overflow in the forward pass (try bf16-mixed or "
                f"32-true), or a learning rate too high (lr={lr} now)"
            )
        elif resumed:
            cause = f"a corrupted checkpoint ({trainer.ckpt_path}, the first step after resuming from it)"
        else:
            cause = (
                f"a learning rate too high (lr={lr} now): lower it, or clip gradients "
                "(gradient_clip_val); otherwise non-finite inputs, or a corrupted checkpoint"
            )
        return (
            f"training diverged: {_listed(what)} became NaN/inf at optimizer step {step} "
            f"(found {where}; FiniteCheck reads its record every few steps); likely cause: {cause}. "
            "No checkpoint was saved and no adapter exported after that step"
        )


def _learning_rate(trainer: pl.Trainer) -> str:
    rates = sorted({group["lr"] for opt in trainer.optimizers for group in opt.param_groups if "lr" in group})
    return ", ".join(f"{r:g}" for r in rates) or "unknown"  # the current value (after any schedule)


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _names(names: list[str], shown: int = 3) -> str:
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
