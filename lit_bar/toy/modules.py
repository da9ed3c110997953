"""LightningModules for the toy problems NOP (Eq. 11) and OP (Eq. 12); see :mod:`lit_bar.toy.problems`.

Both are :class:`lit_bar.SAMModule` subclasses: ``rho > 0`` trains with SAM, ``rho = 0`` with the
base optimizer alone (SGD by default), and nBAR/oBAR come from adding ``BalancednessCallback()``,
which finds the pair through :meth:`factor_pairs` (``lit_bar.algorithms.pairs.module_pairs``), so
``configs/method/nbar.yaml`` composes with ``configs/toy/*.yaml`` as it is. The batch is the noise
(``ToyNoiseDataModule``)::

    noise batch ──► compute_loss: ½‖x yᵀ − (A + α N)‖²   or   ½(xᵀy − (a + α n))²
    after each optimizer step: log toy/balancedness = ½(‖x‖² − ‖y‖²)   (Sec. 2.2)
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from typing_extensions import override

from lit_bar.algorithms.pairs import FactorPair, balancedness
from lit_bar.lightning.module import SAMModule
from lit_bar.toy.problems import fit_loss, imbalanced_factors, rank_one_target

__all__ = ["NOPModule", "OPModule"]


def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, int | float) or not alpha >= 0 or alpha == float("inf"):
        raise ValueError(f"alpha (the noise scale) must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


def _check_noise(noise: torch.Tensor, sample_shape: tuple[int, ...], problem: str) -> None:
    if tuple(noise.shape[1:]) != sample_shape:
        raise ValueError(
            f"{problem} expects noise batches of shape (batch, {', '.join(map(str, sample_shape))}), got "
            f"{tuple(noise.shape)}; set the data module's shape to {list(sample_shape)}"
        )


class _FactorToy(SAMModule):
    """What NOP and OP share: the pair (x, y) from the paper's imbalanced start, the noise scale α,
    the loss ½‖f − (target + α noise)‖² of the output f, and the balancedness log."""

    def __init__(
        self, dim_x: int, dim_y: int, alpha: float, norm_x: float, norm_y: float, seed: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.alpha = _check_alpha(alpha)
        x0, y0 = imbalanced_factors(dim_x, dim_y, norm_x, norm_y, seed)
        self.x = nn.Parameter(x0)
        self.y = nn.Parameter(y0)

    def factor_pairs(self) -> list[FactorPair]:
        """The scale-invariant pair (x, y): what ``lit_bar.algorithms.pairs.module_pairs`` (and so
        ``BalancednessCallback``) uses for this module instead of searching for peft LoRA layers."""
        return [FactorPair("x|y", self.x, self.y)]

    def pairs(self) -> list[FactorPair]:
        """Same as :meth:`factor_pairs` (the name the toy scripts use)."""
        return self.factor_pairs()

    @override
    def loss_from_outputs(self, outputs: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return fit_loss(outputs, self.target, batch, self.alpha)  # Eq. 11 / Eq. 12

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("toy/balancedness", balancedness(self.factor_pairs())[0])


class NOPModule(_FactorToy):
    """Non-overparameterised toy problem (Eq. 11): fit the rank-one A = u vᵀ with x yᵀ under noise.

    Args:
        dim_x: d₁, the dimension of x (the paper: 10).
        dim_y: d₂, the dimension of y (the paper: 10).
        alpha: Noise scale α of the data A + α N; larger α means lower SNR, 0 means no noise.
        norm_x: ‖x₀‖ (the paper: 3).
        norm_y: ‖y₀‖ (the paper: 0.3).
        seed: Seed of x₀, y₀ (random directions) and of A (drawn from ``seed + 1``).
        optimizer: Factory ``params -> optimizer``; the paper's toy runs use SGD.
        rho: SAM radius ρ; 0 trains with the optimizer alone (SGD, or nBAR/oBAR via the callback).
        **kwargs: Further :class:`lit_bar.SAMModule` arguments.
    """

    def __init__(
        self,
        dim_x: int = 10,
        dim_y: int = 10,
        alpha: float = 1.0,
        norm_x: float = 3.0,
        norm_y: float = 0.3,
        seed: int = 0,
        optimizer: OptimizerCallable = torch.optim.SGD,
        rho: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim_x, dim_y, alpha, norm_x, norm_y, seed, optimizer=optimizer, rho=rho, **kwargs)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.register_buffer("target", rank_one_target(dim_x, dim_y, seed + 1))

    @override
    def compute_outputs(self, batch: torch.Tensor) -> torch.Tensor:
        _check_noise(batch, tuple(self.target.shape), "NOPModule")
        return torch.outer(self.x, self.y)  # f = x yᵀ


class OPModule(_FactorToy):
    """Overparameterised toy problem (Eq. 12): fit the scalar a with xᵀ y under noise.

    Args:
        dim: d, the dimension of x and y (the paper: 10).
        target: The scalar a (the paper: 1).
        alpha: Noise scale α of the data a + α n; larger α means lower SNR, 0 means no noise.
        norm_x: ‖x₀‖ (the paper: 3).
        norm_y: ‖y₀‖ (the paper: 0.3).
        seed: Seed of x₀, y₀ (random directions).
        optimizer: Factory ``params -> optimizer``; the paper's toy runs use SGD.
        rho: SAM radius ρ; 0 trains with the optimizer alone (SGD, or nBAR/oBAR via the callback).
        **kwargs: Further :class:`lit_bar.SAMModule` arguments.
    """

    def __init__(
        self,
        dim: int = 10,
        target: float = 1.0,
        alpha: float = 1.0,
        norm_x: float = 3.0,
        norm_y: float = 0.3,
        seed: int = 0,
        optimizer: OptimizerCallable = torch.optim.SGD,
        rho: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, dim, alpha, norm_x, norm_y, seed, optimizer=optimizer, rho=rho, **kwargs)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.target = float(target)

    @override
    def compute_outputs(self, batch: torch.Tensor) -> torch.Tensor:
        _check_noise(batch, (), "OPModule")
        return torch.dot(self.x, self.y)  # f = xᵀ y
