"""The Lightning side of :class:`lit_bar.SAMModule`: :class:`LightningFrontEnd` (what
:class:`lit_bar.engine.SAMEngine` asks of a framework), :func:`step_schedulers` (manual optimization
steps its own schedulers) and :class:`EvaluationHooks` (one hook for validation and test)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from lightning.pytorch import LightningModule
from typing_extensions import override

from lit_bar.algorithms.batches import batch_size

__all__ = ["EvaluationHooks", "LightningFrontEnd", "step_schedulers"]


class LightningFrontEnd:
    """:class:`lit_bar.engine.FrontEnd` over a :class:`lit_bar.SAMModule`: its loss, its precision
    plugin, its strategy."""

    def __init__(self, module: LightningModule) -> None:
        self.module = module
        self.world_size = module.trainer.world_size

    def loss(self, batch: Any) -> torch.Tensor:
        return self.module.compute_loss(batch)

    def loss_and_outputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.module.compute_outputs(batch)
        return self.module.loss_from_outputs(outputs, batch), outputs

    def outputs(self, batch: Any) -> torch.Tensor:
        return self.module.compute_outputs(batch)

    def scale(self, tensor: torch.Tensor) -> torch.Tensor:
        scaler = getattr(self.module.trainer.precision_plugin, "scaler", None)
        return scaler.scale(tensor) if scaler is not None else tensor

    def backward(self, tensor: torch.Tensor, gradient: torch.Tensor | None = None) -> None:
        """``manual_backward`` (hooks, DDP, the plugin's loss scaling); a seeded backward's
        ``gradient`` carries the loss scale already, so the plugin's scaler sits that one out."""
        if gradient is None:
            self.module.manual_backward(tensor)
            return
        plugin = self.module.trainer.precision_plugin
        scaler = getattr(plugin, "scaler", None)
        if scaler is not None:
            plugin.scaler = None
        try:
            self.module.manual_backward(tensor, gradient=gradient)
        finally:
            if scaler is not None:
                plugin.scaler = scaler

    def no_sync(self) -> contextlib.AbstractContextManager[Any]:
        block = getattr(self.module.trainer.strategy, "block_backward_sync", None)
        return contextlib.nullcontext() if block is None else block()


def step_schedulers(module: LightningModule, interval: str) -> None:
    """Step ``module``'s LR schedulers of ``interval`` (``"step"``: after each optimizer step,
    ``"epoch"``: after each epoch), honouring their ``frequency``; a ``ReduceLROnPlateau`` steps on
    the logged ``module.lr_scheduler_monitor`` (Lightning drops the ``monitor`` key under manual
    optimization)."""
    trainer = module.trainer
    count = trainer.global_step if interval == "step" else module.current_epoch + 1
    for config in trainer.lr_scheduler_configs:
        if config.interval != interval or count % config.frequency:
            continue
        if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            metric = trainer.callback_metrics.get(module.lr_scheduler_monitor)
            if metric is None:
                logged = sorted(trainer.callback_metrics)
                raise ValueError(
                    f"ReduceLROnPlateau monitors {module.lr_scheduler_monitor!r} (lr_scheduler_monitor), "
                    f"which was not logged before the {interval}'s scheduler step; logged: {logged}"
                )
            config.scheduler.step(metric)
        else:
            config.scheduler.step()


class EvaluationHooks:
    """Validation and test through one hook each: task modules override :meth:`evaluation_step`
    (and :meth:`on_evaluation_epoch_end`), not the four Lightning hooks."""

    def evaluation_step(self, batch: Any, stage: str) -> torch.Tensor:
        """One validation (``stage="val"``) or test (``"test"``) batch; logs ``{stage}/loss``.

        Task modules override this one method (not ``validation_step``/``test_step``) to add metrics.
        """
        loss = self.compute_loss(batch)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=batch_size(batch))
        return loss

    def on_evaluation_epoch_end(self, stage: str) -> None:
        """End of a validation (``"val"``) or test (``"test"``) epoch: log epoch-level metrics here."""

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.evaluation_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.evaluation_step(batch, "test")

    @override
    def on_validation_epoch_end(self) -> None:
        self.on_evaluation_epoch_end("val")

    @override
    def on_test_epoch_end(self) -> None:
        self.on_evaluation_epoch_end("test")
