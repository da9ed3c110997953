"""The paper's two scale-invariant toy problems (App. A.4, Eq. 11 and 12; docs/algorithms.md §4), pure torch.

- NOP (Eq. 11): x ∈ ℝ^{d₁}, y ∈ ℝ^{d₂},  f = ½‖x yᵀ − (A + α N)‖²_F,  A = u vᵀ,  N fresh each step.
- OP  (Eq. 12): x, y ∈ ℝ^d,              f = ½(xᵀ y − (a + α n))²,     n ~ N(0, 1) fresh each step.

α is the noise scale: the larger α, the lower the signal-to-noise ratio (SNR). Both start
imbalanced, with ‖x₀‖ = 3 and ‖y₀‖ = 0.3 in random directions drawn from a fixed seed.
Nothing here imports Lightning.
"""

from __future__ import annotations

import torch

__all__ = ["imbalanced_factors", "nop_loss", "op_loss", "rank_one_target"]


def imbalanced_factors(
    dim_x: int, dim_y: int, norm_x: float = 3.0, norm_y: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random directions of ℝ^{dim_x} and ℝ^{dim_y} scaled to ``norm_x`` and ``norm_y`` (App. A.4).

    Args:
        dim_x: Dimension of x.
        dim_y: Dimension of y.
        norm_x: ‖x₀‖ (the paper: 3).
        norm_y: ‖y₀‖ (the paper: 0.3).
        seed: Seed of the directions; the same seed gives the same (x₀, y₀).

    Returns:
        ``(x0, y0)``, float32 tensors.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(dim_x, generator=generator)
    y = torch.randn(dim_y, generator=generator)
    return norm_x * x / x.norm(), norm_y * y / y.norm()


def rank_one_target(dim_x: int, dim_y: int, seed: int = 0) -> torch.Tensor:
    """The ground truth A = u vᵀ of NOP, u and v with unit Gaussian entries (App. A.4)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(dim_x, generator=generator)
    v = torch.randn(dim_y, generator=generator)
    return torch.outer(u, v)


def nop_loss(
    x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, noise: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Eq. 11, averaged over a batch of noise matrices: mean_i ½‖x yᵀ − (A + α Nᵢ)‖²_F.

    Args:
        x: Shape ``(d₁,)``.
        y: Shape ``(d₂,)``.
        target: A, shape ``(d₁, d₂)``.
        noise: N, shape ``(batch, d₁, d₂)`` with unit Gaussian entries.
        alpha: Noise scale α (larger = lower SNR).
    """
    return fit_loss(torch.outer(x, y), target, noise, alpha)


def op_loss(
    x: torch.Tensor, y: torch.Tensor, target: float, noise: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Eq. 12, averaged over a batch of scalar noises: mean_i ½(xᵀ y − (a + α nᵢ))².

    Args:
        x: Shape ``(d,)``.
        y: Shape ``(d,)``.
        target: The scalar a.
        noise: n, shape ``(batch,)`` with unit Gaussian entries.
        alpha: Noise scale α (larger = lower SNR).
    """
    return fit_loss(torch.dot(x, y), target, noise, alpha)


def fit_loss(
    product: torch.Tensor, target: torch.Tensor | float, noise: torch.Tensor, alpha: float
) -> torch.Tensor:
    """mean_i ½‖f − (target + α noiseᵢ)‖² for the model output f = x yᵀ (NOP) or xᵀ y (OP).

    The loss depends on (x, y) only through f, which is what Functional-SAM differentiates through.
    """
    residual = product - (target + alpha * noise)
    return 0.5 * residual.reshape(residual.shape[0], -1).square().sum(dim=1).mean()
