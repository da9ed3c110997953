"""A SAM step's window of micro-batches in a checkpoint: saved inside a window, resumed exactly.

:class:`WindowCheckpoint` is the part of :class:`lit_bar.engine.SAMEngine` that turns the window in
progress (pending micro-batches with their RNG states and Functional-SAM seeds, the ascent gradient,
the running sums) and the gradients accumulated so far into plain containers
(``torch.load(weights_only=True)`` reads them), and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_map

from lit_bar.engine.passes import Pending

__all__ = ["WindowCheckpoint"]


class WindowCheckpoint:
    """The window's save and restore; the state lives on the engine (``_window``, ``_ascent``, ...)."""

    _window: list[Pending]
    _ascent: list[torch.Tensor] | None
    _ascent_mean: list[torch.Tensor] | None
    _sums: dict[str, torch.Tensor]
    _logging: bool

    def state_dict(self) -> dict[str, Any]:
        """The window in progress, in plain containers (``torch.load(weights_only=True)`` reads it);
        ``{}`` at a window boundary."""
        if not self._window and not self._sums:
            return {}
        return {
            "window": [
                {"batch": p.batch, "rng": list(p.rng), "seed": p.seed, "weight": p.weight}
                for p in self._window
            ],
            "ascent": self._ascent,
            "ascent_mean": self._ascent_mean,
            "sums": dict(self._sums),
            "logging": self._logging,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Resume a window saved by :meth:`state_dict`, moving its tensors (not RNG states) to ``device``."""

        def to(value: Any) -> Any:
            if device is None:
                return value
            return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)

        if not state:
            self._window, self._ascent, self._ascent_mean, self._sums = [], None, None, {}
            return
        self._window = [
            Pending(to(p["batch"]), tuple(p["rng"]), to(p["seed"]), p["weight"]) for p in state["window"]
        ]
        self._ascent = to(state["ascent"])
        self._ascent_mean = to(state["ascent_mean"])
        self._sums = to(dict(state["sums"]))
        self._logging = bool(state["logging"])

    def window_state(self, params: Sequence[torch.Tensor], micro_batches: int) -> dict[str, Any] | None:
        """The accumulation window in progress for a checkpoint (``None`` at an optimizer-step
        boundary): the pending micro-batches and sums, and the gradients ``params`` hold so far."""
        state = self.state_dict()
        grads = [p.grad for p in params]
        if not state and all(g is None for g in grads):
            return None
        return {"engine": state, "grads": grads, "accumulate_grad_batches": micro_batches}

    def load_window_state(
        self, state: dict[str, Any], params: Sequence[torch.Tensor], micro_batches: int, device: Any
    ) -> None:
        """Resume :meth:`window_state`'s window; refuse one saved with another window length."""
        saved = state.get("accumulate_grad_batches", micro_batches)
        if saved != micro_batches:
            raise ValueError(
                f"the checkpoint was saved inside a window of accumulate_grad_batches={saved}; resume it "
                f"with that value (this run has {micro_batches}), or from a checkpoint at an optimizer step"
            )
        if state["engine"]:
            self.load_state_dict(state["engine"], device)
        for param, grad in zip(params, state["grads"], strict=True):
            param.grad = None if grad is None else grad.to(param.device)
