"""``BalancednessMonitor``: log |balancedness| of every scale-invariant pair, for any method (Fig. 3).

The paper's Fig. 3 compares how ``|B_t| = |½(‖x‖² − ‖y‖²)|`` evolves under LoRA, SAM and BAR. nBAR and
oBAR runs log it through :class:`lit_bar.BalancednessCallback`; this callback logs the same key,
``bar/abs_balancedness`` (mean over pairs), for runs that do not regularise (LoRA, SAM, Functional-SAM,
preconditioned SAM), so every method's logs can be compared. It changes nothing in training.

It runs in ``on_before_optimizer_step`` (once per optimizer step in automatic optimization and under
:class:`lit_bar.SAMModule` alike) on the same steps as ``BalancednessCallback`` logs: a logging step
costs one ``torch._foreach_norm`` over the factors and one copy to the host (the values are logged as
``BalancednessCallback`` logs them: :func:`lit_bar.callbacks.balancedness.log_abs_balancedness`);
every other step costs one integer comparison.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_bar.algorithms.pairs import FactorPair, balancedness, module_pairs
from lit_bar.callbacks.balancedness import BalancednessCallback, log_abs_balancedness
from lit_bar.lightning.steps import is_logging_step
from lit_bar.lightning.strategies import is_fsdp2

__all__ = ["BalancednessMonitor"]


class BalancednessMonitor(Callback):
    """Log the mean |balancedness| of the module's pairs at logging steps (and per pair if asked).

    Pairs come from :func:`lit_bar.algorithms.pairs.module_pairs` (the module's ``factor_pairs()``,
    else its peft
    LoRA pairs). A module without pairs (e.g. ``lora: null``) gets one info line and no logging.
    Do not add it beside :class:`lit_bar.BalancednessCallback`, which logs the same key already.

    Args:
        log_per_pair: Also log each pair's value as ``bar/abs_balancedness/<pair name>``.
    """

    def __init__(self, log_per_pair: bool = False) -> None:
        if not isinstance(log_per_pair, bool):
            raise ValueError(f"log_per_pair must be True or False, got {log_per_pair!r}")
        self.log_per_pair = log_per_pair
        self.pairs: list[FactorPair] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if any(isinstance(cb, BalancednessCallback) for cb in trainer.callbacks):
            raise ValueError(
                "BalancednessMonitor and BalancednessCallback both log 'bar/abs_balancedness': "
                "keep only BalancednessCallback (it has log_per_pair too)"
            )
        self.pairs = module_pairs(pl_module)
        if not self.pairs:
            rank_zero_info(
                f"BalancednessMonitor: {type(pl_module).__name__} has no scale-invariant pairs "
                "(no LoRA layers): nothing to monitor, no balancedness will be logged"
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if is_fsdp2(trainer.strategy):  # configure_model (after setup) swapped in sharded parameters
            self.pairs = module_pairs(pl_module)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.pairs or not is_logging_step(trainer):  # the step in progress
            return
        log_abs_balancedness(pl_module, self.pairs, balancedness(self.pairs).abs(), self.log_per_pair)
