"""Bi-LoRA (Liu, Li, Huang, Yang, Huang; ICLR 2026, arXiv:2508.19564v2). Pure torch.

Bi-LoRA gives every LoRA layer a second, *auxiliary* low-rank pair (B₂, A₂) that carries SAM's
adversarial weight perturbation, so that perturbing and descending happen in one backward::

    W = W₀ + B₁A₁ + B₂A₂                                                                 (Eq. 7)
    min_{B₁,A₁}  max_{‖B₂A₂‖_F ≤ ρ}  L(W₀ + B₁A₁ + B₂A₂)                                   (Eq. 8)
    B₁ ← B₁ − η₁(∇_W L)A₁ᵀ,   A₁ ← A₁ − η₁B₁ᵀ(∇_W L)          primary: descent            (Eq. 9)
    B₂ ← B₂ + η₂(∇_W L)A₂ᵀ,   A₂ ← A₂ + η₂B₂ᵀ(∇_W L)          auxiliary: ascent           (Eq. 9)
    c = √(Σ_j ‖B₂⁽ʲ⁾A₂⁽ʲ⁾‖²_F);  if c > ρ: B₂⁽ⁱ⁾, A₂⁽ⁱ⁾ ← √(ρ/c)·B₂⁽ⁱ⁾, √(ρ/c)·A₂⁽ⁱ⁾   (Eq. 10)

with ∇_W L taken at W₀ + B₁A₁ + B₂A₂, i.e. both updates from the same backward (Alg. 1, lines 7-8:
descent and ascent, then clipping after each update; line 11: the auxiliary modules are removed,
so inference and the exported adapter are W₀ + B₁A₁). Here B₁A₁ is peft's s·B₁A₁. The clipping is
global over the N layers (the paper's ablation, Table 5: global beats per-layer and no clipping).
The paper uses η₂ = η₁ ("we simply set η₂ = η₁", Sec. 4.6; App. Q), auxiliary rank r₂ = 8 with
primary rank 8 (4 with 4 for SDXL), and ρ = 0.05 (GLUE, Llama) or 0.1 (SuperGLUE, Qwen), App. R.

Sources: the paper's text (arXiv HTML v2, read in a stored copy); the reference code
(CrazyElements/Bi-LoRA) is not stored here. Not stated in the paper, and chosen here: (B₂, A₂)
start like peft's LoRA (A₂ Kaiming-uniform, B₂ = 0, so the first perturbation is 0); the auxiliary
path has no dropout and no scaling (its product *is* the perturbation, as in Eq. 7); the rank
defaults to the primary's. Eq. 9 is written as plain gradient steps while the experiments train
with their baselines' recipes (lr 5e-4, cosine schedule) and do not name the auxiliary optimizer,
so :class:`lit_bar.callbacks.BiLoRACallback` offers AdamW in ``maximize`` mode (default) and plain
SGD ascent (Eq. 9 literally).

Line by line: :meth:`BiLoRA._forward_hook` adds x·A₂ᵀB₂ᵀ to each LoRA layer's output in training
mode (the B₂A₂ term of Eq. 7; nothing in eval mode: Alg. 1 line 11); the ascent of Eq. 9 is the
optimizer's ``maximize=True`` (or :meth:`BiLoRA.ascent_step`, plain SGD); :meth:`BiLoRA.project_` is
Eq. 10, with ‖B₂A₂‖²_F computed as ⟨B₂ᵀB₂, A₂A₂ᵀ⟩ (r × r products, no out × in matrix), no host sync.

The auxiliary tensors are not registered in the model: they are not in its ``state_dict``, not in
the base optimizer, not in the peft adapter and not seen by BAR's pair search; their owner
(the callback, or your loop) saves them and all-reduces their gradients under DDP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_bar.methods.flatlora import LoraLayerView, lora_layers

__all__ = ["AUX_OPTIMIZERS", "BiLoRA", "validate_bilora_settings"]

#: The auxiliary pair's optimizers: AdamW with ``maximize=True`` (default) or plain SGD ascent (Eq. 9).
AUX_OPTIMIZERS = ("adamw", "sgd")


def validate_bilora_settings(
    owner: str, rho: float, aux_lr: float | None, aux_optimizer: str, rank: int | None
) -> None:
    """The checks every Bi-LoRA front end makes of its settings (``ValueError`` naming the bad value)."""
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not rho > 0:
        raise ValueError(f"{owner} rho (the perturbation radius) must be > 0, got {rho!r}")
    if aux_lr is not None and (
        isinstance(aux_lr, bool) or not isinstance(aux_lr, int | float) or not aux_lr > 0
    ):
        raise ValueError(f"aux_lr must be > 0 or None (the base learning rate), got {aux_lr!r}")
    if aux_optimizer not in AUX_OPTIMIZERS:
        raise ValueError(f"unknown aux_optimizer {aux_optimizer!r}; allowed: {', '.join(AUX_OPTIMIZERS)}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be an int >= 1 or None (the primary's rank), got {rank!r}")


class BiLoRA:
    """Auxiliary low-rank pairs (B₂, A₂) on a model's LoRA layers, active in training mode only.

    A plain loop::

        bi = BiLoRA(model, rho=0.05)
        aux = torch.optim.AdamW(bi.parameters(), lr=3e-4, weight_decay=0.0, maximize=True)  # ascent
        for batch in loader:
            loss(batch).backward()            # one backward: primary and auxiliary gradients
            optimizer.step(); aux.step()      # descent on (A₁, B₁), ascent on (A₂, B₂)
            bi.project_()                     # ‖Σ B₂A₂‖ ≤ ρ (global clipping)
            optimizer.zero_grad(); aux.zero_grad()

    Args:
        model: Its peft LoRA layers get a pair each (:func:`lit_bar.methods.flatlora.lora_layers`).
        rho: ρ > 0, the radius of the perturbation ‖(B₂⁽ʲ⁾A₂⁽ʲ⁾)_j‖_F (paper: 0.05 or 0.1).
        rank: r₂, the auxiliary rank; ``None`` takes each layer's primary rank.
        seed: Seeds A₂'s initialisation (the same on every process).
    """

    def __init__(
        self,
        model: nn.Module | Sequence[LoraLayerView],
        rho: float = 0.05,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not rho > 0 or not math.isfinite(rho):
            raise ValueError(
                f"Bi-LoRA rho (the perturbation radius) must be a finite number > 0, got {rho!r}"
            )
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"Bi-LoRA rank must be an int >= 1 or None (the primary's rank), got {rank!r}")
        self.layers = lora_layers(model) if isinstance(model, nn.Module) else list(model)
        if not self.layers:
            raise ValueError(
                "Bi-LoRA found no peft LoRA layer to pair with an auxiliary module: "
                "wrap the model with peft LoRA"
            )
        self.rho, self.rank, self.enabled = float(rho), rank, True
        self.a: list[torch.Tensor] = []
        self.b: list[torch.Tensor] = []
        generator = torch.Generator().manual_seed(int(seed))
        for view in self.layers:
            r = rank or (view.factors[0][0].shape[0] if view.factors else 8)
            dtype = torch.float64 if view.weight.dtype == torch.float64 else torch.float32
            a = torch.empty(r, view.in_features, dtype=dtype)
            bound = 1.0 / math.sqrt(view.in_features)  # kaiming_uniform_(a=√5), peft's lora_A default
            a.uniform_(-bound, bound, generator=generator)
            self.a.append(a.to(view.weight.device).requires_grad_())
            self.b.append(
                torch.zeros(view.out_features, r, dtype=dtype, device=view.weight.device).requires_grad_()
            )
        self._handles = [
            view.layer.register_forward_hook(self._forward_hook(i)) for i, view in enumerate(self.layers)
        ]

    def _forward_hook(self, index: int):
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            if not (self.enabled and module.training):
                return None  # eval / inference: W₀ + s·B₁A₁ only
            x = args[0]
            a, b = self.a[index], self.b[index]
            if not torch.is_autocast_enabled(x.device.type):  # autocast casts by itself
                a, b = a.to(x.dtype), b.to(x.dtype)
            return output + F.linear(F.linear(x, a), b).to(output.dtype)  # x (B₂A₂)ᵀ

        return hook

    def parameters(self) -> list[torch.Tensor]:
        """The auxiliary tensors, [A₂⁽¹⁾, B₂⁽¹⁾, A₂⁽²⁾, ...] (leaves with ``requires_grad``)."""
        return [t for pair in zip(self.a, self.b, strict=True) for t in pair]

    @torch.no_grad()
    def perturbation_norm(self) -> torch.Tensor:
        """c = √(Σ_j ‖B₂⁽ʲ⁾A₂⁽ʲ⁾‖²_F), with ‖BA‖²_F = ⟨BᵀB, AAᵀ⟩ (0-d tensor, no host sync)."""
        total = None
        for a, b in zip(self.a, self.b, strict=True):
            term = (
                ((b.T @ b) * (a @ a.T)).sum().to(torch.float64 if a.dtype == torch.float64 else torch.float32)
            )
            total = term if total is None else total + term.to(total.device)
        return total.clamp_min(0).sqrt()

    @torch.no_grad()
    def project_(self) -> torch.Tensor:
        """Global clipping: if c > ρ scale every B₂ and A₂ by √(ρ/c), so c becomes ρ; returns c (before)."""
        norm = self.perturbation_norm()
        factor = (self.rho / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp(max=1.0).sqrt()
        for tensors in (self.a, self.b):
            by_device: dict[torch.device, list[torch.Tensor]] = {}
            for t in tensors:
                by_device.setdefault(t.device, []).append(t)
            for device, group in by_device.items():
                torch._foreach_mul_(group, factor.to(device=device, dtype=group[0].dtype))
        return norm

    @torch.no_grad()
    def ascent_step(self, lr: float) -> None:
        """Plain gradient ascent, the paper's update: B₂ ← B₂ + η₂ ∇_{B₂}L, A₂ ← A₂ + η₂ ∇_{A₂}L."""
        params = [p for p in self.parameters() if p.grad is not None]
        if params:
            torch._foreach_add_(params, [p.grad for p in params], alpha=lr)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def remove(self) -> None:
        """Drop the auxiliary pairs from the forward for good (after training)."""
        for handle in self._handles:
            handle.remove()
        self._handles, self.enabled = [], False

    def state_dict(self) -> dict[str, Any]:
        """The auxiliary factors (on the CPU) and the settings."""
        return {
            "rho": self.rho,
            "a": [t.detach().cpu() for t in self.a],
            "b": [t.detach().cpu() for t in self.b],
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["a"]) != len(self.a):
            raise ValueError(
                f"Bi-LoRA state holds {len(state['a'])} auxiliary pairs "
                f"but the model has {len(self.a)} LoRA layers"
            )
        for mine, saved in zip(self.a + self.b, list(state["a"]) + list(state["b"]), strict=True):
            if mine.shape != saved.shape:
                raise ValueError(
                    f"Bi-LoRA state: a factor of shape {tuple(saved.shape)} for one of {tuple(mine.shape)}"
                )
            mine.copy_(saved)
        self.rho = float(state["rho"])
