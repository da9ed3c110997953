"""GPT-2's fused q/k/v projection split into three modules for training, and fused back for export.

GPT-2 computes q, k and v with one ``Conv1D`` (``attn.c_attn``, d → 3d); LoRA on it would be one
(A, B) pair whose update spans q, k *and* v. :func:`split_fused_qkv` replaces every ``c_attn`` by
:class:`FusedQKVSplit` (three ``nn.Linear`` ``q_proj``/``k_proj``/``v_proj`` with the same weights,
whose concatenated output equals ``c_attn``'s), so LoRA can target q and v as separate pairs (the
training side, :class:`lit_bar.tasks.generation.DataToTextGenerator`). A stock GPT-2 adapter puts
one LoRA pair on ``c_attn``; :func:`fuse_qkv` and :func:`fused_config` turn the split pairs into it
(the export side, :mod:`lit_bar.export`)::

    c_attn(x) = x W + b + s' B' A' x,   A' = [A_q; A_v]  (2r × d),   B' = ⎡B_q·s_q/s'   0      ⎤  (3d × 2r)
                                                                         ⎢  0         0      ⎥  ← k rows
                                                                         ⎣  0      B_v·s_v/s'⎦
    B' A' x = [B_q A_q x · s_q/s';  0;  B_v A_v x · s_v/s']

with rank r' = 2r and lora_alpha chosen so that s' = s_q (alpha' = s_q · r', or s_q · √r' with
rsLoRA): the factors s_i/s' are 1 and the fused update is the split one. :func:`unfuse_qkv` takes a
stock adapter back apart (refusing one whose update is not block-diagonal over the adapted parts),
and :func:`refuse_qkv` puts a stock ``Conv1D`` back in place of each split module (merged export).

One module for both directions, below the task modules and the artifact layer (which both import it).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D
from typing_extensions import override

__all__ = [
    "FusedQKVSplit",
    "fuse_qkv",
    "fused_config",
    "refuse_qkv",
    "saved_scale",
    "split_fused_qkv",
    "split_qkv_modules",
    "unfuse_qkv",
]

_QKV = ("q_proj", "k_proj", "v_proj")


class FusedQKVSplit(nn.Module):
    """A fused q/k/v projection (``Conv1D`` d → 3d) as three ``nn.Linear``; same output, separate modules.

    Args:
        fused: GPT-2's ``c_attn``: ``weight`` (d_in, 3·d), ``bias`` (3·d); y = x W + b.
    """

    def __init__(self, fused: Conv1D) -> None:
        super().__init__()
        d_in, d_out = fused.weight.shape[0], fused.weight.shape[1] // 3
        kwargs = {"device": fused.weight.device, "dtype": fused.weight.dtype}
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_in, d_out, **kwargs) for _ in range(3))
        with torch.no_grad():
            for i, linear in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                linear.weight.copy_(fused.weight[:, i * d_out : (i + 1) * d_out].T)
                linear.bias.copy_(fused.bias[i * d_out : (i + 1) * d_out])

    @override
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)], dim=-1)


def split_fused_qkv(model: nn.Module, name: str = "c_attn") -> int:
    """Replace each fused ``Conv1D`` named ``name`` by a :class:`FusedQKVSplit`; return how many."""
    targets = [(parent, child) for parent in model.modules() for child, _ in parent.named_children()]
    count = 0
    for parent, child in targets:
        module = getattr(parent, child)
        if child == name and isinstance(module, Conv1D) and module.weight.shape[1] % 3 == 0:
            setattr(parent, child, FusedQKVSplit(module))
            count += 1
    return count


def refuse_qkv(model: nn.Module) -> None:
    """Replace every split q/k/v module by a stock ``Conv1D`` holding the same (merged) weights."""
    for parent in list(model.modules()):
        for child, module in list(parent.named_children()):
            if isinstance(module, FusedQKVSplit):
                parts = (module.q_proj, module.k_proj, module.v_proj)
                d_out, d_in = parts[0].weight.shape
                fused = Conv1D(3 * d_out, d_in).to(parts[0].weight)
                with torch.no_grad():
                    fused.weight.copy_(torch.cat([p.weight.T for p in parts], dim=1))
                    fused.bias.copy_(torch.cat([p.bias for p in parts]))
                setattr(parent, child, fused)


def split_qkv_modules(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{c_attn name in the peft state dict: {part: its LoRA layer or None}}`` for adapted split modules."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, FusedQKVSplit):
            parts = {p: getattr(module, p) for p in _QKV}
            parts = {p: (m if hasattr(m, "lora_A") else None) for p, m in parts.items()}
            if any(parts.values()):
                found[name] = parts
    return found


def _part_layout(parts: dict[str, Any]) -> tuple[list[tuple[int, str, Any]], int, int]:
    """``[(position among q/k/v, part, layer)]`` of the adapted parts, the total rank and the width d."""
    adapted = [(i, p, parts[p]) for i, p in enumerate(_QKV) if parts[p] is not None]
    for _, part, layer in adapted:
        if layer.use_dora.get("default") or layer.lora_bias.get("default"):
            raise ValueError(
                f"{part}: DoRA / lora_bias adapters on split q/k/v cannot be fused into one c_attn LoRA "
                "pair; export a merged model instead (AdapterExport(merged_dirname='merged'))"
            )
    rank = sum(layer.r["default"] for _, _, layer in adapted)
    width = adapted[0][2].out_features
    return adapted, rank, width


def fuse_qkv(state: dict[str, torch.Tensor], prefix: str, parts: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Replace the parts' ``lora_A``/``lora_B`` entries by one fused pair (module docstring)."""
    adapted, rank, width = _part_layout(parts)
    target_scale = adapted[0][2].scaling["default"]
    first = state[f"{prefix}.{adapted[0][1]}.lora_A.weight"]
    fused_a = first.new_zeros(rank, first.shape[1])
    fused_b = first.new_zeros(3 * width, rank)
    offset = 0
    for position, part, layer in adapted:
        a, b = state.pop(f"{prefix}.{part}.lora_A.weight"), state.pop(f"{prefix}.{part}.lora_B.weight")
        ratio = layer.scaling["default"] / target_scale
        r = a.shape[0]
        fused_a[offset : offset + r] = a
        fused_b[position * width : (position + 1) * width, offset : offset + r] = (
            b if ratio == 1 else b * ratio
        )
        offset += r
    state[f"{prefix}.lora_A.weight"] = fused_a
    state[f"{prefix}.lora_B.weight"] = fused_b
    return state


def fused_config(config: Any, fused_name: str, parts: dict[str, Any]) -> Any:
    """The LoRA config of the stock model: ``c_attn`` targeted with rank Σr and alpha giving s' = s_q."""
    adapted, rank, _ = _part_layout(parts)
    if not isinstance(config.target_modules, set | list | tuple):
        raise ValueError(
            f"target_modules {config.target_modules!r} is a pattern; split q/k/v can only be fused "
            "back for a list of module names"
        )
    scale = adapted[0][2].scaling["default"]
    alpha = scale * (math.sqrt(rank) if config.use_rslora else rank)
    config.target_modules = {t for t in config.target_modules if t not in _QKV} | {fused_name}
    if config.target_modules == {fused_name} and not config.rank_pattern and not config.alpha_pattern:
        config.r, config.lora_alpha = rank, alpha
    else:  # other targets keep r and lora_alpha
        config.rank_pattern = {**config.rank_pattern, fused_name: rank}
        config.alpha_pattern = {**config.alpha_pattern, fused_name: alpha}
    config.fan_in_fan_out = True  # c_attn is a transformers Conv1D (weight stored d_in × d_out)
    return config


def saved_scale(config: Any, prefix: str) -> float:
    """The LoRA scaling s = alpha / r (alpha / √r with rsLoRA) ``config`` gives the module ``prefix``."""
    r = _pattern_value(config.rank_pattern, prefix, config.r)
    alpha = _pattern_value(config.alpha_pattern, prefix, config.lora_alpha)
    return alpha / (math.sqrt(r) if config.use_rslora else r)


def _pattern_value(pattern: dict[str, Any], name: str, default: Any) -> Any:
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def unfuse_qkv(
    weights: dict[str, torch.Tensor], prefix: str, parts: dict[str, Any], saved_scale: float
) -> dict[str, torch.Tensor]:
    """Split a fused ``c_attn`` pair into the model's q/k/v pairs; the other blocks of B must be zero."""
    adapted, rank, width = _part_layout(parts)
    a, b = weights.pop(f"{prefix}.lora_A.weight"), weights.pop(f"{prefix}.lora_B.weight")
    if a.shape[0] != rank or b.shape != (3 * width, rank):
        raise ValueError(
            f"{prefix}: the adapter's c_attn pair has rank {a.shape[0]}, this model's q/k/v pairs "
            f"{rank} in all (load it with the LoRA settings of the run that wrote it)"
        )
    rest = b.clone()
    offset = 0
    for position, part, layer in adapted:
        r = layer.r["default"]
        rows = slice(position * width, (position + 1) * width)
        ratio = saved_scale / layer.scaling["default"]
        block = b[rows, offset : offset + r]
        weights[f"{prefix}.{part}.lora_A.weight"] = a[offset : offset + r].clone()
        weights[f"{prefix}.{part}.lora_B.weight"] = block.clone() if ratio == 1 else block * ratio
        rest[rows, offset : offset + r] = 0
        offset += r
    if rest.any():
        raise ValueError(
            f"{prefix}: the adapter's c_attn update is not block-diagonal over this model's adapted "
            f"{[p for _, p, _ in adapted]}; load it with split_qkv=False and target_modules [c_attn]"
        )
    return weights
