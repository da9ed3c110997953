"""Flat-LoRA (Li, He, Li, Wang, Shang, Huang; ICML 2025, arXiv:2409.14396v2). Pure torch.

Flat-LoRA looks for a low-rank adaptation that is flat in the *full* parameter space, relaxing the
full-space SAM objective (Eq. 5) to a Bayesian expected loss (so one forward/backward per step)::

    min_{A,B}  max_{‖ε_W‖_F ≤ ρ}  L(W + BA + ε_W)                                    (Eq. 5)
    min_{A,B}  E_{ε_W} L(W + BA + ε_W)                                                (Eq. 6)
    (ε_W)_{i,j} ~ N(0, σ²/n · ‖W'_{i,:}‖²₂),   W' = W + BA,   n = input dimension      (Eq. 7)

The paper omits LoRA's scaling s = α/r ("it can be merged into A and B", Sec. 3.1); here the merged
weight is peft's W + s·BA. One ε_W is drawn per optimization step ("we sample a noise matrix ε_W
for each optimization step", Sec. 3.2), per filter (output row i) with a std proportional to that
row's norm, and with the 1/n that makes the added output variance (a factor 1 + σ², Eq. 9,
Prop. 3.2) independent of the input width. Only the generator's seed and the m filter norms are
kept, and ε_W is reconstructed from them "when needed" (Sec. 3.3, "Storing random seed for memory
efficiency"): here, to take it off after the step. The paper recommends "gradually increasing the
perturbation strength" (Sec. 3.2) and runs "σ = 0.05 with a cosine-increasing strategy" (Sec. 4.1,
T5 GLUE; Sec. 4.3, Llama 2; 0.15 for CLIP ViT-B/32 in Sec. 4.2; App. D suggests σ = 0.05 or 0.10).
It does not print the strategy's formula; ``"cosine"`` (the default) is σ_t = σ·(1 − cos πt/T)/2,
the usual cosine-increasing ramp of random weight perturbation, which re-implementations of the
reference code (nblt/Flat-LoRA, not stored here: only its README, ``++rho=0.05``) also use;
``"linear"`` (σ·t/T) and ``"constant"`` are offered too. σ is this module's ``rho``.

Sources: the paper's text (arXiv HTML v2, read in a stored copy); the reference code could not be
read. Line by line, :meth:`FlatLoRA.perturb` implements::

    σ_t        = flat_sigma(ρ, t, T, schedule)                 cosine-increasing σ (Sec. 3.2, 4.1)
    scale_i    = σ_t / √n · ‖(W + s·BA)_{i,:}‖₂               per-filter std (Eq. 7)   row_scales()
    ε          = scale[:, None] · randn(m, n; seed(t, layer))    one draw per step        noise()
    W          ← W + ε                                         before the window's first micro-batch

and :meth:`FlatLoRA.restore` draws the same ε from the same seed and the saved m scales (Sec. 3.3)
and subtracts it after the optimizer step. Every micro-batch of an accumulation window sees the
same ε (it stays on W for the whole window), and every process draws the same ε (the seed is a
function of the run's seed, the step and the layer's index only), so DDP ranks stay identical
without communication.

Exactness of the restore: ``(W + ε) − ε`` is W up to one rounding of W's dtype per step (≤ ½ ulp).
In float32/float64 that is far below anything training resolves; with a bfloat16/float16 base
weight the rounding (2⁻⁹ relative) would accumulate over a run, so :class:`FlatLoRA` refuses such
weights unless ``restore="copy"``, which keeps an exact copy of each perturbed weight instead
(memory of the LoRA layers' base weights, the price the paper's seed trick avoids; the paper's
other route, injecting ε while autocast casts fp32 master weights to half precision, Sec. 3.3, is
not implemented).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["FLAT_SCHEDULES", "RESTORES", "FlatLoRA", "LoraLayerView", "flat_sigma", "lora_layers"]

FLAT_SCHEDULES = ("cosine", "linear", "constant")
RESTORES = ("regenerate", "copy")
_SEED_MIX = (1_000_003, 9_176_467)  # two odd constants mixing (seed, step, layer) into one seed


def flat_sigma(rho: float, step: int, total_steps: int | None, schedule: str = "cosine") -> float:
    """σ_t, the noise strength at optimizer step ``step`` (0-based) of ``total_steps`` (paper Sec. 3.2, 4.1).

    ``"cosine"`` (the paper's "cosine-increasing strategy"): ρ·(1 − cos πt/T)/2; ``"linear"``: ρ·t/T;
    ``"constant"``: ρ. Both ramps start at 0, reach ρ at t = T and stay there (t is clamped to T).
    """
    if schedule == "constant":
        return float(rho)
    if total_steps is None or total_steps < 1:
        raise ValueError(f"schedule={schedule!r} needs total_steps >= 1, got {total_steps!r}")
    frac = min(max(step, 0), total_steps) / total_steps
    if schedule == "linear":
        return float(rho) * frac
    if schedule == "cosine":
        return float(rho) * 0.5 * (1.0 - math.cos(math.pi * frac))
    raise ValueError(f"unknown Flat-LoRA schedule {schedule!r}; allowed: {', '.join(FLAT_SCHEDULES)}")


def validate_flat_settings(rho: float, schedule: str, total_steps: int | None, restore: str) -> None:
    """Raise a one-line ``ValueError`` for a bad Flat-LoRA argument."""
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not rho >= 0 or not math.isfinite(rho):
        raise ValueError(f"Flat-LoRA rho (the noise strength σ) must be a finite number >= 0, got {rho!r}")
    if schedule not in FLAT_SCHEDULES:
        raise ValueError(f"unknown Flat-LoRA schedule {schedule!r}; allowed: {', '.join(FLAT_SCHEDULES)}")
    if total_steps is not None and (
        isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
    ):
        raise ValueError(f"total_steps must be an int >= 1 or None (the run's length), got {total_steps!r}")
    if restore not in RESTORES:
        raise ValueError(f"unknown restore {restore!r}; allowed: {', '.join(RESTORES)}")


@dataclass
class LoraLayerView:
    """One peft LoRA layer seen as ``W_eff (out × in) + Σ s·B A`` over its active, unmerged adapters.

    Attributes:
        name: The layer's module name.
        layer: The peft layer (its forward hooks are where Bi-LoRA's auxiliary pair acts).
        weight: The frozen base weight parameter, in its stored layout.
        transposed: The stored layout is (in × out) (GPT-2's Conv1D, ``fan_in_fan_out``).
        factors: ``(A (r × in), B (out × r), s)`` of every active, unmerged adapter.
    """

    name: str
    layer: nn.Module
    weight: torch.Tensor
    transposed: bool
    factors: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)

    @property
    def effective(self) -> torch.Tensor:
        """W as (out × in): a view of the stored weight."""
        return self.weight.T if self.transposed else self.weight

    @property
    def in_features(self) -> int:
        return self.effective.shape[1]

    @property
    def out_features(self) -> int:
        return self.effective.shape[0]

    def merged(self, dtype: torch.dtype) -> torch.Tensor:
        """W' = W + Σ s·B A in ``dtype`` (a new tensor)."""
        merged = self.effective.detach().to(dtype).clone()
        for a, b, scale in self.factors:
            merged.addmm_(b.detach().to(dtype), a.detach().to(dtype), alpha=scale)
        return merged


def lora_layers(model: nn.Module) -> list[LoraLayerView]:
    """Every peft LoRA layer of ``model`` on a floating-point ``nn.Linear``/``Conv1D`` base, in module order.

    Raises:
        ValueError: A LoRA layer that Flat-LoRA / Bi-LoRA cannot treat as ``W + s·BA`` on a dense weight
            (LoRA on embeddings or convolutions, DoRA, a quantized base): the message names it.
    """
    from peft.tuners.lora import LoraLayer

    views = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        kind = type(module).__name__
        weight = getattr(module.get_base_layer(), "weight", None)
        if (
            getattr(module, "lora_embedding_A", None)
            or kind != "Linear"
            or weight is None
            or weight.dim() != 2
        ):
            raise ValueError(
                f"layer {name!r} is a peft LoRA {kind} layer; Flat-LoRA and Bi-LoRA support LoRA on dense "
                "linear layers (nn.Linear, GPT-2's Conv1D) only: leave it out of target_modules"
            )
        if not weight.is_floating_point():
            raise ValueError(
                f"layer {name!r}: the base weight is {weight.dtype} (quantized?); it must be float"
            )
        if any(getattr(module, "use_dora", {}).get(a, False) for a in module.active_adapters):
            raise ValueError(
                f"layer {name!r} uses DoRA, whose merged weight is not W + s·BA; "
                "Flat-LoRA and Bi-LoRA support plain LoRA (and rsLoRA) only: set use_dora=false"
            )
        view = LoraLayerView(name, module, weight, bool(getattr(module, "fan_in_fan_out", False)))
        merged = set(getattr(module, "merged_adapters", []))
        if not getattr(module, "disable_adapters", False):
            for adapter in module.active_adapters:
                if adapter in module.lora_A and adapter not in merged:
                    a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                    view.factors.append((a, b, float(module.scaling[adapter])))
        views.append(view)
    return views


def _noise_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


class FlatLoRA:
    """Flat-LoRA's per-step weight noise on the frozen base weights of a model's LoRA layers.

    Use it around each optimizer step (plain loop)::

        flat = FlatLoRA(model, rho=0.05, schedule="cosine", total_steps=T, seed=0)
        for t in range(T):
            flat.perturb(t)              # W ← W + ε_t   (before the window's first micro-batch)
            for batch in window:         # every micro-batch sees the same ε_t
                loss(batch).backward()
            optimizer.step(); optimizer.zero_grad()
            flat.restore()               # W ← W − ε_t   (ε_t drawn again from its seed)

    Args:
        model: Its peft LoRA layers are perturbed (:func:`lora_layers`); or the layers themselves.
        rho: σ ≥ 0, the final noise strength (paper: 0.05 for T5 and Llama 2, 0.15 for CLIP ViT-B/32).
        schedule: σ's ramp, ``"cosine"`` (the paper's), ``"linear"`` or ``"constant"`` (:func:`flat_sigma`).
        total_steps: T for the ramps (``None`` for ``"constant"``, or set the attribute later).
        seed: The run's noise seed; step t of layer l draws from a generator seeded by (seed, t, l).
        restore: ``"regenerate"`` (the paper's: subtract ε drawn again; float32/64 base weights) or
            ``"copy"`` (keep an exact copy of each base weight for the step; any float dtype).
    """

    def __init__(
        self,
        model: nn.Module | Sequence[LoraLayerView],
        rho: float = 0.05,
        schedule: str = "cosine",
        total_steps: int | None = None,
        seed: int = 0,
        restore: str = "regenerate",
    ) -> None:
        validate_flat_settings(rho, schedule, total_steps, restore)
        self.layers = lora_layers(model) if isinstance(model, nn.Module) else list(model)
        if not self.layers:
            raise ValueError("Flat-LoRA found no peft LoRA layer to perturb: wrap the model with peft LoRA")
        low = sorted(
            {str(v.weight.dtype) for v in self.layers if v.weight.dtype in (torch.float16, torch.bfloat16)}
        )
        if low and restore == "regenerate":
            raise ValueError(
                f"Flat-LoRA restore='regenerate' on {', '.join(low)} weights would drift by one rounding "
                "(2^-9 relative) per step; load the base in float32, or pass restore='copy'"
            )
        self.rho, self.schedule, self.total_steps = float(rho), schedule, total_steps
        self.seed, self.restore_mode = int(seed), restore
        self.step: int | None = None  # the step whose noise is on the weights, or None
        self._scales: list[torch.Tensor] = []  # per layer: σ_t/√n·‖W'_i‖ (m values), saved at perturb
        self._copies: list[torch.Tensor] = []

    @property
    def active(self) -> bool:
        """Whether noise is on the weights now."""
        return self.step is not None

    def sigma(self, step: int) -> float:
        """σ at optimizer step ``step`` (:func:`flat_sigma`)."""
        return flat_sigma(self.rho, step, self.total_steps, self.schedule)

    def layer_seed(self, step: int, index: int) -> int:
        """The generator seed of layer ``index`` at ``step``: the same on every process and on resume."""
        return ((self.seed * _SEED_MIX[0] + step) * _SEED_MIX[1] + index) % (2**63 - 1)

    @torch.no_grad()
    def row_scales(self, step: int) -> list[torch.Tensor]:
        """σ_t/√n · ‖W'_{i,:}‖₂ per output row i of every layer (paper Eq. 7), from the current W, A, B."""
        sigma = self.sigma(step)
        scales = []
        for view in self.layers:
            norms = torch.linalg.vector_norm(view.merged(_noise_dtype(view.weight)), dim=1)
            scales.append(norms * (sigma / math.sqrt(view.in_features)))
        return scales

    def noise(self, step: int, index: int, scale: torch.Tensor) -> torch.Tensor:
        """ε of layer ``index`` at ``step`` (out × in), drawn from its seed: the same tensor every call."""
        view = self.layers[index]
        weight = view.weight
        generator = torch.Generator(device=weight.device).manual_seed(self.layer_seed(step, index))
        shape = (view.out_features, view.in_features)
        eps = torch.randn(shape, generator=generator, device=weight.device, dtype=_noise_dtype(weight))
        return eps.mul_(scale.unsqueeze(1))

    @torch.no_grad()
    def perturb(self, step: int) -> None:
        """W ← W + ε_step on every layer (call once per optimizer step, before its first micro-batch)."""
        if self.active:
            raise RuntimeError(
                f"Flat-LoRA: the noise of step {self.step} is still on the weights; restore() it before "
                f"perturbing for step {step}"
            )
        self._scales = self.row_scales(step)
        self._copies = [v.weight.detach().clone() for v in self.layers] if self.restore_mode == "copy" else []
        self._apply(step, self._scales, +1.0)
        self.step = step

    @torch.no_grad()
    def restore(self) -> None:
        """W ← W − ε_step (drawn again from its seed; ``restore="copy"``: the copy); no-op if inactive."""
        if not self.active:
            return
        if self._copies:
            for view, copy in zip(self.layers, self._copies, strict=True):
                view.weight.copy_(copy)
        else:
            self._apply(self.step, self._scales, -1.0)
        self.step, self._copies = None, []
        torch.clear_autocast_cache()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Take the noise off for the duration (evaluation), then put the same ε back."""
        if not self.active:
            yield
            return
        step, scales = self.step, self._scales
        self.restore()
        try:
            yield
        finally:
            if self.restore_mode == "copy":
                self._copies = [v.weight.detach().clone() for v in self.layers]
            with torch.no_grad():
                self._apply(step, scales, +1.0)
            self.step, self._scales = step, scales

    def _apply(self, step: int, scales: list[torch.Tensor], sign: float) -> None:
        for index, (view, scale) in enumerate(zip(self.layers, scales, strict=True)):
            eps = self.noise(step, index, scale)
            view.effective.add_(eps.to(view.weight.dtype), alpha=sign)
            del eps
        torch.clear_autocast_cache()  # autocast's cached casts of the old weights are stale

    def clean_weight(self, index: int) -> torch.Tensor:
        """Layer ``index``'s base weight without the noise (a new tensor; for checkpoints saved mid-step)."""
        view = self.layers[index]
        if not self.active:
            return view.weight.detach().clone()
        if self._copies:
            return self._copies[index].clone()
        eps = self.noise(self.step, index, self._scales[index])
        clean = view.effective.detach() - eps.to(view.weight.dtype)
        return clean.T.contiguous() if view.transposed else clean

    def state_dict(self) -> dict[str, Any]:
        """Seed and schedule: all a resumed run needs to draw the same noise at the same step."""
        return {
            "seed": self.seed,
            "rho": self.rho,
            "schedule": self.schedule,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.total_steps = int(state["seed"]), state["total_steps"]
        self.rho, self.schedule = float(state["rho"]), state["schedule"]
