"""What a checkpoint needs beyond Lightning's own state for an exact resume: the random generators.

Lightning saves no RNG state, so a resumed run draws fresh dropout masks. These functions turn the
torch, CUDA, numpy and Python ``random`` states into tensors, ints and floats only, which
``torch.load(weights_only=True)`` accepts, and back. :class:`lit_bar.SAMModule` stores one entry per
process in ``checkpoint["rng_states"]`` and restores its own at ``on_train_start``, i.e. after the
fit loop has built the training loader and its iterator (the loaders of ``lit_bar.data`` draw their
seeds from their own generators, so building them does not move the global state either).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["collect_rng_states", "gather_per_rank", "restore_rng_states"]


def collect_rng_states() -> dict[str, Any]:
    """The generators' states of this process, as tensors and plain numbers."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(mt_state, dtype=torch.int64),
            "gauss": gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the generators from :func:`collect_rng_states`'s output (CUDA only where it was saved)."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["state"].tolist()), python_state["gauss"]))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            rank_zero_warn(
                f"the checkpoint holds CUDA RNG states of {len(cuda)} devices, this process sees "
                f"{torch.cuda.device_count()}: CUDA generators not restored (dropout masks will differ)"
            )
        else:
            torch.cuda.set_rng_state_all(cuda)


def gather_per_rank(value: Any, world_size: int) -> list[Any]:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (just ``[value]`` in one process).

    A collective under DDP: every rank must call it, which ``Trainer.save_checkpoint`` already
    requires (it ends with a barrier on every rank).
    """
    if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, _to_cpu(value))
    return gathered


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value
