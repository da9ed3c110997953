"""What a framework supplies to the SAM step (:class:`FrontEnd`), and the ascent's one all-reduce."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.distributed

__all__ = ["FrontEnd", "all_reduce_sum"]


class FrontEnd(Protocol):
    """What a framework supplies to :class:`lit_bar.engine.SAMEngine` for one micro-batch's passes.

    Attributes:
        world_size: Number of data-parallel processes (1 without DDP).
    """

    world_size: int

    def loss(self, batch: Any) -> torch.Tensor:
        """The scalar loss of ``batch`` at the current weights (the front end's own normalisation)."""

    def loss_and_outputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the outputs f it is a function of (Functional-SAM's ascent pass)."""

    def outputs(self, batch: Any) -> torch.Tensor:
        """The outputs f of ``batch`` (Functional-SAM's descent pass)."""

    def scale(self, tensor: torch.Tensor) -> torch.Tensor:
        """Loss scaling (fp16 ``GradScaler``); the identity without a scaler."""

    def backward(self, tensor: torch.Tensor, gradient: torch.Tensor | None = None) -> None:
        """Accumulate into ``.grad``: scale and backward ``tensor``, or, with ``gradient`` (which
        already carries the loss scale), ``tensor.backward(gradient)`` without scaling again."""

    def no_sync(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which a backward does not all-reduce (DDP's ``no_sync``)."""


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Sum ``tensors`` over all processes: one ``torch.distributed.all_reduce`` of a flat buffer.

    The buffer has the tensors' promoted dtype (float64 gradients are reduced in float64).
    """
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    parts = flat.split([t.numel() for t in tensors])
    return [p.view_as(t).to(t.dtype) for p, t in zip(parts, tensors, strict=True)]
