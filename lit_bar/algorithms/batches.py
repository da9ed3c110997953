"""What one pass over a micro-batch needs besides the model: its size and slicing, the RNG fork and
replay that give the ascent and the descent the same dropout masks, and frozen BatchNorm statistics.
Pure torch, used by the SAM step (:mod:`lit_bar.engine`) and its front ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._pytree import tree_flatten

__all__ = ["batch_size", "frozen_batchnorm", "is_batched", "rng_state", "set_rng_state"]


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
