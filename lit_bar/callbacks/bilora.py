"""``BiLoRACallback``: Bi-LoRA's auxiliary ascent pair (:class:`lit_bar.methods.BiLoRA`) in Lightning.

The auxiliary pairs are built in ``on_fit_start`` (the model is on its device by then) and act through
forward hooks in training mode only, so the one backward of each micro-batch fills the primary's
gradients (descent, the base optimizer) and the auxiliary ones (ascent) together. The auxiliary
optimizer belongs to this callback and steps in ``on_before_optimizer_step`` — after the closure,
accumulation and the AMP unscale of the base optimizer, once per optimizer step:

    [DDP] all-reduce the auxiliary gradients (mean over processes; they are not DDP parameters)
    ascent   AdamW(maximize=True) or SGD(maximize=True) on (A₂, B₂), lr = aux_lr × the primary's
             current lr / its initial lr (the primary's schedule); under 16-mixed through the
             GradScaler (unscaled, skipped on non-finite gradients like the base step)
    project  global clipping ‖Σ_j B₂A₂‖ ≤ ρ (:meth:`BiLoRA.project_`)

The auxiliary pairs are not part of the model: the base optimizer, the checkpoint's ``state_dict``,
the exported peft ``adapter/`` and nBAR/oBAR's pairs hold the primary LoRA only; this callback's own
state (``state_dict``) holds the auxiliary factors and their optimizer for resuming. ``on_fit_end``
removes the hooks. Works under automatic optimization and :class:`lit_bar.SAMModule` with ρ = 0,
with nBAR/oBAR on the primary pairs; refuses SAM (ρ > 0) and Flat-LoRA.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_bar.callbacks.flatlora import refuse_combinations
from lit_bar.engine import all_reduce_sum
from lit_bar.lightning.resume import gather_per_rank
from lit_bar.lightning.steps import is_logging_step
from lit_bar.methods.bilora import AUX_OPTIMIZERS, BiLoRA, validate_bilora_settings

__all__ = ["AUX_OPTIMIZERS", "BiLoRACallback"]


class BiLoRACallback(Callback):
    """Bi-LoRA (Liu et al., ICLR 2026): an auxiliary LoRA pair per layer, ascended in the same backward.

    Args:
        rho: ρ > 0, the radius of the auxiliary perturbation (global over all layers).
        aux_lr: η₂, the auxiliary learning rate; ``None`` takes the base optimizer's (first group's).
        aux_optimizer: ``"adamw"`` (AdamW, no weight decay, ``maximize=True``) or ``"sgd"``
            (plain ascent, the paper's equation).
        rank: The auxiliary rank r₂; ``None`` takes each layer's primary rank.
        seed: Seeds the auxiliary A₂ (identical on every process).
        log_norm: On logging steps log ``bilora/perturbation_norm`` (c before clipping).
    """

    perturbs_merged_weight = True  # refuse_combinations: one successor per run

    def __init__(
        self,
        rho: float = 0.05,
        aux_lr: float | None = None,
        aux_optimizer: str = "adamw",
        rank: int | None = None,
        seed: int = 0,
        log_norm: bool = True,
    ) -> None:
        validate_bilora_settings("BiLoRACallback", rho, aux_lr, aux_optimizer, rank)
        self.rho, self.aux_lr, self.aux_optimizer, self.rank = rho, aux_lr, aux_optimizer, rank
        self.seed, self.log_norm = seed, log_norm
        self.bilora: BiLoRA | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None
        self._pending_grads: list[Any] | None = None  # per rank: a window's auxiliary gradients

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            refuse_combinations(trainer, pl_module, "BiLoRACallback")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.bilora = BiLoRA(pl_module, self.rho, self.rank, self.seed)
        base = trainer.optimizers[0].param_groups[0]
        lr = self.aux_lr if self.aux_lr is not None else base.get("initial_lr", base["lr"])
        params = self.bilora.parameters()
        if self.aux_optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, maximize=True)
        else:
            self.optimizer = torch.optim.SGD(params, lr=lr, maximize=True)
        self.optimizer.param_groups[0]["initial_lr"] = lr
        if self._pending is not None:
            self.bilora.load_state_dict(self._pending["bilora"])
            self.optimizer.load_state_dict(self._pending["optimizer"])
            self._pending = None
        if self._pending_grads is not None:
            self._load_window(trainer, self._pending_grads)
            self._pending_grads = None
        rank_zero_info(
            f"BiLoRACallback: auxiliary pairs on {len(self.bilora.layers)} LoRA layers, rho={self.rho}, "
            f"{self.aux_optimizer} ascent at lr={lr}"
        )

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for p in self.bilora.parameters() if p.grad is not None]
        if trainer.world_size > 1 and params:  # not DDP parameters: reduce them here, as a mean
            reduced = all_reduce_sum([p.grad for p in params])
            for p, g in zip(params, reduced, strict=True):
                p.grad = g.div_(trainer.world_size)
        group, base = self.optimizer.param_groups[0], optimizer.param_groups[0]
        ratio = base["lr"] / base["initial_lr"] if base.get("initial_lr") else 1.0
        group["lr"] = group["initial_lr"] * ratio  # the primary's schedule
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if params:
            if scaler is not None:
                scaler.step(self.optimizer)  # unscales; skips the step on non-finite gradients
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        norm = self.bilora.project_()
        if self.log_norm and is_logging_step(trainer):  # the step in progress
            pl_module.log("bilora/perturbation_norm", norm.detach().cpu())

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Inside an accumulation window, keep every process's auxiliary gradients (as SAMModule keeps
        the primary's): a collective under DDP, as ``Trainer.save_checkpoint`` is."""
        if self.bilora is None:
            return
        grads = [None if p.grad is None else p.grad.detach() for p in self.bilora.parameters()]
        if any(g is not None for g in grads):
            checkpoint["bilora_window"] = gather_per_rank(grads, trainer.world_size)

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if "bilora_window" in checkpoint:
            self._pending_grads = checkpoint["bilora_window"]

    def _load_window(self, trainer: pl.Trainer, window: list[Any]) -> None:
        if len(window) != trainer.world_size:
            raise ValueError(
                f"the checkpoint was saved inside an accumulation window by {len(window)} processes; Bi-LoRA "
                f"resumes it exactly only with {len(window)} (this run has {trainer.world_size}): resume "
                "from a checkpoint at an optimizer step"
            )
        for p, g in zip(self.bilora.parameters(), window[trainer.global_rank], strict=True):
            p.grad = None if g is None else g.to(p.device)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bilora is not None:
            self.bilora.remove()

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.bilora is None:
            return dict(self._pending or {})
        return {"bilora": self.bilora.state_dict(), "optimizer": self.optimizer.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.bilora is None:  # restored before on_fit_start: applied there
            self._pending = dict(state_dict)
            return
        self.bilora.load_state_dict(state_dict["bilora"])
        self.optimizer.load_state_dict(state_dict["optimizer"])
