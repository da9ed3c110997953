"""``BalancednessCallback``: nBAR / oBAR (paper Alg. 2 and 3) applied once per optimizer step.

It runs in ``on_before_optimizer_step``, which Lightning calls after the closure, the AMP unscale,
gradient accumulation and the DDP all-reduce, in automatic optimization and under
:class:`lit_bar.SAMModule` alike, so the rule sees final gradients. The decoupled update
(ALGORITHMS.md §3) then changes the factors before the base optimizer steps with unchanged
gradients. Under fp16 a step that the GradScaler will skip (non-finite gradients) is skipped here
too, through a 0/1 tensor: no host sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_bar.bar import apply_bar, bar_signs, mu_at, validate_mode, validate_schedule
from lit_bar.pairs import FactorPair, balancedness, module_pairs, pairs_from_names
from lit_bar.steps import total_optimizer_steps

__all__ = ["BalancednessCallback"]


class BalancednessCallback(Callback):
    """Balancedness-aware regularisation (BAR) of scale-invariant pairs, e.g. LoRA's (A, B).

    Args:
        mode: ``"nbar"`` (Alg. 2, the LoRA default: sign from ‖g_x‖ vs ‖g_y‖) or ``"obar"``
            (Alg. 3: sign from ‖x‖ vs ‖y‖).
        mu: μ₀ ≥ 0, the regularisation strength (paper grids: 0.1–2).
        schedule: ``"constant"``, ``"linear"`` (1 − t/T) or ``"cosine"`` (½(1 + cos πt/T)).
        total_steps: T for the decaying schedules; ``None`` takes the run's optimizer steps.
        pairs: ``None`` asks the module (:func:`lit_bar.pairs.module_pairs`: its ``factor_pairs()``,
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
        self.mode = validate_mode(mode)
        self.schedule = validate_schedule(schedule)
        if not isinstance(mu, int | float) or not mu >= 0 or mu == float("inf"):
            raise ValueError(f"mu must be a finite number >= 0, got {mu!r}")
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"total_steps must be a positive int or None, got {total_steps!r}")
        self.mu = float(mu)
        self.total_steps = total_steps
        self.pair_spec = list(pairs) if pairs is not None else None
        self.log_per_pair = log_per_pair
        self.pairs: list[FactorPair] = []
        self.branch_counts = torch.zeros(2)  # cumulative pair-steps with s = +1, s = −1
        self._group_index: tuple[torch.optim.Optimizer, list[int]] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.pair_spec is None:
            self.pairs = module_pairs(pl_module)
            if not self.pairs:
                raise ValueError(
                    "BalancednessCallback found no scale-invariant pairs in "
                    f"{type(pl_module).__name__}: it looked for peft LoRA layers (lora_A/lora_B, "
                    "lora_embedding_A/B) with an active, unmerged, trainable "
                    "adapter. Wrap the model with peft LoRA, or pass pairs=[(x_name, y_name), ...]"
                )
        elif all(isinstance(p, FactorPair) for p in self.pair_spec):
            self.pairs = list(self.pair_spec)
        else:
            self.pairs = pairs_from_names(pl_module, self.pair_spec)
        frozen = [p.name for p in self.pairs if not (p.x.requires_grad and p.y.requires_grad)]
        if frozen:
            raise ValueError(
                "BalancednessCallback needs gradients, but these pairs have a factor with "
                "requires_grad=False: "
                f"{frozen[:5]}{' ...' if len(frozen) > 5 else ''}"
            )
        rank_zero_info(
            f"BalancednessCallback: {self.mode} on {len(self.pairs)} pairs, mu={self.mu} ({self.schedule})"
        )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule != "constant" and self.total_steps is None:
            self.total_steps = total_optimizer_steps(trainer, pl_module)
        self.branch_counts = self.branch_counts.to(pl_module.device)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        mu = mu_at(self.mu, trainer.global_step, self.total_steps or 0, self.schedule)
        signs = bar_signs(self.mode, self.pairs)
        keep = self._step_is_kept(trainer, optimizer)
        coeff = apply_bar(self.pairs, signs, self._pair_lrs(optimizer), mu, keep)
        active = (coeff != 0).float()
        self.branch_counts += torch.stack([(active * (signs > 0)).sum(), (active * (signs < 0)).sum()])
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:  # logging costs more than BAR itself
            self._log(pl_module, signs, active, mu)

    def _pair_lrs(self, optimizer: torch.optim.Optimizer) -> list[float]:
        """η_t of each pair's parameter group (read each step: schedulers change it)."""
        if self._group_index is None or self._group_index[0] is not optimizer:
            group_of = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
            missing = [p.name for p in self.pairs if id(p.x) not in group_of or id(p.y) not in group_of]
            if missing:
                raise ValueError(
                    f"BalancednessCallback: pairs {missing[:5]} are not optimised by "
                    f"{type(optimizer).__name__}"
                )
            self._group_index = (optimizer, [group_of[id(p.x)] for p in self.pairs])
        groups = optimizer.param_groups
        return [float(groups[i]["lr"]) for i in self._group_index[1]]

    @staticmethod
    def _step_is_kept(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """0 when the GradScaler skips this step (a non-finite gradient), else 1; None without a scaler."""
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            return None
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return None
        norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])
        return torch.isfinite(norms).all().float()

    def _log(
        self, pl_module: pl.LightningModule, signs: torch.Tensor, active: torch.Tensor, mu: float
    ) -> None:
        values = balancedness(self.pairs).abs()
        pl_module.log("bar/abs_balancedness", values.mean())
        pl_module.log("bar/mu", mu)
        pl_module.log("bar/pairs_plus", (active * (signs > 0)).sum())
        pl_module.log("bar/pairs_minus", (active * (signs < 0)).sum())
        if self.log_per_pair:
            for pair, value in zip(self.pairs, values.unbind(), strict=True):
                pl_module.log(f"bar/abs_balancedness/{pair.name}", value)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "branch_counts": self.branch_counts.cpu()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_steps = state_dict["total_steps"]
        self.branch_counts = state_dict["branch_counts"].clone()
