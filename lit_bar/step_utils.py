"""Small pieces of the SAM step that are not SAM: batch slicing, RNG fork/replay, BatchNorm freezing,
finiteness checks of weights and batches.

Pure torch (no Lightning), used by :class:`lit_bar.SAMModule` and the callbacks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._pytree import tree_flatten

from lit_bar.sharded import any_over_shards, local, shard_group

__all__ = [
    "NonFiniteError",
    "all_finite",
    "batch_size",
    "float_tensors",
    "frozen_batchnorm",
    "is_batched",
    "non_finite_names",
    "rng_state",
    "set_rng_state",
]


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
    peaks = torch._foreach_norm([local(t) for t in tensors], float("inf"))
    device = local(tensors[0]).device
    return torch.stack([torch.isfinite(p).to(device) for p in peaks]).all()


def non_finite_names(named: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating tensors in ``named`` that hold a NaN or an inf (one host sync)."""
    items = [(name, t) for name, t in named.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    items = [(name, t) for name, t in items if t.numel()]
    if not items:
        return []
    peaks = torch._foreach_norm([local(t) for _, t in items], float("inf"))
    device = local(items[0][1]).device
    bad = torch.stack([~torch.isfinite(p).to(device) for p in peaks])
    bad = any_over_shards(bad, shard_group([t for _, t in items], whole_ok=True))  # FSDP2: all slices
    return [name for (name, _), flag in zip(items, bad.tolist(), strict=True) if flag]  # one copy


def batch_size(batch: Any) -> int:
    leaves = [t for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor) and t.ndim > 0]
    if not leaves:
        raise ValueError("cannot find the batch size: the batch holds no tensor with a batch dimension")
    return leaves[0].shape[0]


def is_batched(value: Any, size: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == size


def rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """CPU and CUDA generator states, so both SAM passes draw the same dropout masks."""
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def frozen_batchnorm(module: torch.nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics out of the descent pass (SAM sees each batch twice)."""
    saved = []
    for bn in module.modules():
        if isinstance(bn, _BatchNorm) and bn.track_running_stats:
            saved.append((bn, bn.momentum, bn.num_batches_tracked.clone()))
            bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, momentum, tracked in saved:
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)
