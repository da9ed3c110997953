"""``BalancednessCallback``: nBAR / oBAR (paper Alg. 2 and 3) applied once per optimizer step.

It runs in ``on_before_optimizer_step``, which Lightning calls after the closure, the AMP unscale,
gradient accumulation and the DDP all-reduce, in automatic optimization and under
:class:`lit_bar.SAMModule` alike, so the rule sees final gradients. The decoupled update
(paper Alg. 2 and 3; docs/algorithms.md §3) then changes the factors before the base optimizer
steps with unchanged gradients. Under fp16 a step that the GradScaler will skip (non-finite
gradients) is skipped here too, through a 0/1 tensor: no host sync. The rule itself is
:class:`lit_bar.algorithms.bar.BAR`, shared with plain loops and
:class:`lit_bar.hf.BalancednessTrainerCallback`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_bar.algorithms.bar import BAR, BarStep, finite_gradients, validate_bar_settings
from lit_bar.algorithms.pairs import FactorPair, balancedness, resolve_pairs
from lit_bar.lightning.steps import is_logging_step, total_optimizer_steps
from lit_bar.lightning.strategies import is_fsdp2

__all__ = ["BalancednessCallback", "log_abs_balancedness"]


class BalancednessCallback(Callback):
    """Balancedness-aware regularisation (BAR) of scale-invariant pairs, e.g. LoRA's (A, B).

    The rule is :class:`lit_bar.algorithms.bar.BAR`'s (shared with plain loops and the transformers callback);
    this class wires it into Lightning. Each factor is scaled with its own parameter group's
    learning rate (LoRA+ puts B in a group of its own).

    Args:
        mode: ``"nbar"`` (Alg. 2, the LoRA default: sign from ‖g_x‖ vs ‖g_y‖) or ``"obar"``
            (Alg. 3: sign from ‖x‖ vs ‖y‖).
        mu: μ₀ ≥ 0, the regularisation strength (paper grids: 0.1–2).
        schedule: ``"constant"``, ``"linear"`` (1 − t/T) or ``"cosine"`` (½(1 + cos πt/T)).
        total_steps: T for the decaying schedules; ``None`` takes the run's optimizer steps.
        pairs: ``None`` asks the module (:func:`lit_bar.algorithms.pairs.module_pairs`: its
            ``factor_pairs()``,
            else its peft LoRA pairs); otherwise a list of
            ``(x_parameter_name, y_parameter_name)`` tuples or :class:`lit_bar.FactorPair` objects.
        log_per_pair: Also log |balancedness| of every pair (``bar/abs_balancedness/<name>``).
    """

    def __init__(
        self,
        mode: str = "nbar",
        mu: float = 1.0,
        schedule: str = "constant",
        total_steps: int | None = None,
        pairs: Sequence[tuple[str, str]] | Sequence[FactorPair] | None = None,
        log_per_pair: bool = False,
    ) -> None:
        self.mode, self.mu, self.schedule, self.total_steps = validate_bar_settings(
            mode, mu, schedule, total_steps
        )
        self.pair_spec = list(pairs) if pairs is not None else None
        self.log_per_pair = log_per_pair
        self.bar: BAR | None = None
        self._pending_state: dict[str, Any] | None = None

    @property
    def pairs(self) -> list[FactorPair]:
        """The regularised pairs (empty before ``setup``)."""
        return self.bar.pairs if self.bar is not None else []

    @property
    def branch_counts(self) -> torch.Tensor:
        """Cumulative pair-steps with s = +1 and with s = −1."""
        return self.bar.branch_counts if self.bar is not None else torch.zeros(2)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        pairs = resolve_pairs(pl_module, self.pair_spec, "BalancednessCallback")
        self.bar = BAR(pairs, self.mode, self.mu, self.schedule, self.total_steps)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)
        rank_zero_info(
            f"BalancednessCallback: {self.mode} on {len(pairs)} pairs, mu={self.mu} ({self.schedule})"
        )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if is_fsdp2(trainer.strategy):  # configure_model (after setup) swapped in sharded parameters
            self.bar.pairs = resolve_pairs(pl_module, self.pair_spec, "BalancednessCallback")
        if self.schedule != "constant" and self.total_steps is None:
            self.total_steps = total_optimizer_steps(trainer, pl_module)
        self.bar.total_steps = self.total_steps

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        keep = None
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            keep = finite_gradients(optimizer)  # 0 on the steps the GradScaler skips
        result = self.bar.apply(optimizer, trainer.global_step, keep)
        if is_logging_step(trainer):  # the step in progress; logging costs more than BAR itself
            self._log(pl_module, result)

    def _log(self, pl_module: pl.LightningModule, result: BarStep) -> None:
        """Log |balancedness| and the branch counts of this step (:func:`log_abs_balancedness`), and μ_t."""
        values = balancedness(self.pairs).abs()
        counts = {
            "bar/pairs_plus": (result.active * (result.signs > 0)).sum(),
            "bar/pairs_minus": (result.active * (result.signs < 0)).sum(),
        }
        log_abs_balancedness(pl_module, self.pairs, values, self.log_per_pair, counts)
        pl_module.log("bar/mu", torch.tensor(result.mu, dtype=values.dtype))  # a host tensor: no device copy

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {"total_steps": self.total_steps, "branch_counts": self.branch_counts.cpu()}
        if self.bar is not None:
            state.update(self.bar.state_dict(), total_steps=self.total_steps)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_steps = state_dict["total_steps"]
        if self.bar is None:  # restored before setup: apply once the pairs are known
            self._pending_state = dict(state_dict)
            return
        self.bar.load_state_dict(state_dict)
        self._pending_state = None


def log_abs_balancedness(
    pl_module: pl.LightningModule,
    pairs: Sequence[FactorPair],
    values: torch.Tensor,
    log_per_pair: bool,
    counts: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Log ``values`` (|B| of each of ``pairs``, on the device) the way every BAR callback logs them.

    Their mean goes to ``bar/abs_balancedness`` (the quantity of the paper's Fig. 3), each of ``counts``
    (key: 0-d device tensor) under its key and, with ``log_per_pair``, each pair's value to
    ``bar/abs_balancedness/<pair name>``. All of them are copied to the host in one transfer, the
    logging step's one sync; device tensors handed to ``log`` would cost Lightning one sync each.
    Shared by :class:`BalancednessCallback` and :class:`lit_bar.BalancednessMonitor`, which must not
    both run (the monitor refuses to).
    """
    counts = counts or {}
    parts = [values.mean(), *counts.values(), *(values.unbind() if log_per_pair else ())]
    host = torch.stack([v.to(values.dtype) for v in parts]).cpu().unbind()
    pl_module.log("bar/abs_balancedness", host[0])
    for key, value in zip(counts, host[1:], strict=False):
        pl_module.log(key, value)
    for pair, value in zip(pairs, host[1 + len(counts) :], strict=False):
        pl_module.log(f"bar/abs_balancedness/{pair.name}", value)
