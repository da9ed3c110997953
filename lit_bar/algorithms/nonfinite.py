"""Finiteness of weights, losses and batches, checked on the device (one host sync at most).

:class:`NonFiniteError` is what training raises when a loss, weight or batch value is NaN/inf (or a
checkpoint or export would hold one). FSDP2-sharded tensors are judged by their local slices and
the processes' verdicts combined (:func:`lit_bar.algorithms.sharded.any_over_shards`). Pure torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lit_bar.algorithms.sharded import any_over_shards, local, shard_group

__all__ = ["NonFiniteError", "all_finite", "float_tensors", "non_finite_names"]


class NonFiniteError(FloatingPointError, ValueError):
    """Training produced (or was about to save or export) a NaN or infinite loss, weight or batch value.

    A ``ValueError`` too, so ``lit-bar`` reports it as one ``lit-bar: error:`` line like a bad value.
    """


def float_tensors(obj: Any) -> list[torch.Tensor]:
    """The non-empty floating-point tensors in ``obj`` (nested mappings, lists and tuples)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() and obj.numel() else []
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [t for item in obj for t in float_tensors(item)]
    return []


def all_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """0-d bool tensor on the first tensor's device: every element of every tensor is finite.

    No host sync: max |t| per tensor with one ``torch._foreach_norm(ord=inf)`` (NaN propagates), so
    it is finite exactly when the tensor is. ``True`` (on the CPU) for no tensors. FSDP2-sharded
    tensors: this process's slices (the caller combines the processes' verdicts).
    """
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    peaks = torch._foreach_norm(_local_slices(tensors), float("inf"))
    device = local(tensors[0]).device
    return torch.stack([torch.isfinite(p).to(device) for p in peaks]).all()


def non_finite_names(named: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating tensors in ``named`` that hold a NaN or an inf (one host sync)."""
    items = [(name, t) for name, t in named.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    items = [(name, t) for name, t in items if t.numel()]
    if not items:
        return []
    peaks = torch._foreach_norm(_local_slices([t for _, t in items]), float("inf"))
    device = local(items[0][1]).device
    bad = torch.stack([~torch.isfinite(p).to(device) for p in peaks])
    bad = any_over_shards(bad, shard_group([t for _, t in items], whole_ok=True))  # FSDP2: all slices
    return [name for (name, _), flag in zip(items, bad.tolist(), strict=True) if flag]  # one copy


def _local_slices(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """This process's slice of each tensor; an empty slice (FSDP2 gives the last processes nothing of
    a tensor with fewer rows than processes) becomes one zero, which is finite: ``inf``-norms of
    empty tensors are undefined."""
    slices = [local(t) for t in tensors]
    return [s if s.numel() else s.new_zeros(1) for s in slices]
