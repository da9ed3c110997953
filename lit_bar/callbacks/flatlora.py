"""``FlatLoRACallback``: Flat-LoRA's per-step weight noise (:class:`lit_bar.methods.FlatLoRA`) in Lightning.

Hooks: the noise of optimizer step t goes on the base weights in ``on_train_batch_start`` of the
window's first micro-batch (t = ``trainer.global_step``), stays for every micro-batch of the window,
and comes off in ``on_train_batch_end`` after the optimizer step (``on_before_optimizer_step`` marks
that the step happened). Validation inside a window runs without it (``on_validation_start`` /
``_end`` take it off and put the same ε back); ``on_train_end`` and exceptions take it off for good,
so evaluation, the exported adapter and checkpoints never see it (a checkpoint written mid-window
holds the clean base weights, from ``on_save_checkpoint``). The callback's state is the seed and the
schedule; a resumed run draws ε from (seed, t, layer) again, so it sees the same noise as an
uninterrupted one. Works under automatic optimization and :class:`lit_bar.SAMModule` with ρ = 0;
with nBAR/oBAR (the pairs are the LoRA factors, the noise is on W: independent); not with SAM
(ρ > 0) or Bi-LoRA, which this callback refuses.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_bar.lightning.steps import total_optimizer_steps
from lit_bar.methods.flatlora import FlatLoRA, validate_flat_settings

__all__ = ["FlatLoRACallback", "refuse_combinations"]


def refuse_combinations(trainer: pl.Trainer, pl_module: pl.LightningModule, owner: str) -> None:
    """Refuse sharded strategies, SAM (ρ > 0) and the other successor next to Flat-LoRA / Bi-LoRA,
    with one-line errors.

    The successors are told by their class attribute ``perturbs_merged_weight`` (no import of
    :mod:`lit_bar.callbacks.bilora` here: that module imports this one).
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy | DeepSpeedStrategy | ModelParallelStrategy):
        raise ValueError(
            f"{owner} does not support --trainer.strategy {type(strategy).__name__}: it reads and perturbs "
            "whole LoRA layers (base weight rows, the auxiliary pair's product), which sharded strategies "
            "split across devices; use --trainer.strategy ddp"
        )
    rho = getattr(pl_module, "rho", 0.0)
    if rho:
        raise ValueError(
            f"{owner} replaces SAM's ascent pass, but {type(pl_module).__name__} has rho={rho!r} (SAM); "
            "use rho=0 (configs/method/flatlora.yaml and bilora.yaml set it)"
        )
    names = {type(c).__name__ for c in trainer.callbacks if getattr(c, "perturbs_merged_weight", False)}
    if len(names) > 1:
        raise ValueError(
            "FlatLoRACallback and BiLoRACallback together: both perturb the merged weight for flatness and "
            "neither paper defines their combination; choose one (nBAR/oBAR combine with either)"
        )


class FlatLoRACallback(Callback):
    """Flat-LoRA (Li et al., ICML 2025): noise N(0, σ_t²/n·‖W'_i‖²) on each LoRA base weight.

    Args:
        rho: σ ≥ 0, the final noise strength (paper: 0.05 for T5/Llama 2, 0.15 for CLIP ViT).
        schedule: σ's ramp from 0: ``"cosine"`` (the paper's cosine-increasing), ``"linear"`` or
            ``"constant"`` (no ramp).
        total_steps: T of the ramp; ``None`` takes the run's optimizer steps.
        seed: The noise seed (step t, layer l draw from (seed, t, l): the same on every process).
        restore: ``"regenerate"`` (subtract ε drawn again, the paper's) or ``"copy"`` (an exact copy of
            the base weights per step; needed for bfloat16/float16 base weights).
    """

    perturbs_merged_weight = True  # refuse_combinations: one successor per run

    def __init__(
        self,
        rho: float = 0.05,
        schedule: str = "cosine",
        total_steps: int | None = None,
        seed: int = 0,
        restore: str = "regenerate",
    ) -> None:
        validate_flat_settings(rho, schedule, total_steps, restore)
        self.rho, self.schedule, self.total_steps = rho, schedule, total_steps
        self.seed, self.restore = seed, restore
        self.flat: FlatLoRA | None = None
        self._stepped = False
        self._pending: dict[str, Any] | None = None
        self._suspended: Any = None  # the noise taken off for a validation run

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_combinations(trainer, pl_module, "FlatLoRACallback")
        self.flat = FlatLoRA(pl_module, self.rho, self.schedule, self.total_steps, self.seed, self.restore)
        if self._pending is not None:
            self.flat.load_state_dict(self._pending)
            self._pending = None
        rank_zero_info(
            f"FlatLoRACallback: noise on {len(self.flat.layers)} LoRA base weights, "
            f"rho={self.rho} ({self.schedule})"
        )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.flat.schedule != "constant" and self.flat.total_steps is None:
            self.flat.total_steps = total_optimizer_steps(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.flat.active:  # the window's first micro-batch
            self.flat.perturb(trainer.global_step)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._stepped = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._stepped:  # the optimizer stepped in this micro-batch: the window is over
            self.flat.restore()
            self._stepped = False

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.flat is not None and self.flat.active:
            self._suspended = self.flat.suspended()
            self._suspended.__enter__()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        suspended = self._suspended
        if suspended is not None:
            self._suspended = None
            suspended.__exit__(None, None, None)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.flat is not None:
            self.flat.restore()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.flat is not None:
            self.flat.restore()

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """A checkpoint written while ε is on the weights gets the clean base weights."""
        if self.flat is None or not self.flat.active:
            return
        names = {id(p): n for n, p in pl_module.named_parameters()}
        state = checkpoint.get("state_dict", {})
        for index, view in enumerate(self.flat.layers):
            name = names.get(id(view.weight))
            if name in state:
                state[name] = self.flat.clean_weight(index)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.flat is None:
            return {
                "seed": self.seed,
                "rho": self.rho,
                "schedule": self.schedule,
                "total_steps": self.total_steps,
            }
        return self.flat.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.flat is None:  # restored before setup
            self._pending = dict(state_dict)
            self.seed, self.total_steps = state_dict["seed"], state_dict["total_steps"]
            return
        self.flat.load_state_dict(state_dict)
