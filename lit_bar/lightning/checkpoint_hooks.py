"""Exact resume for :class:`lit_bar.SAMModule`: the checkpoint hooks, as a mixin.

A checkpoint holds each process's RNG states and, when saved inside an accumulation window, the
window in progress (:meth:`lit_bar.engine.SAMEngine.window_state`); training restores both at train
start, once the fit loop has built the loader, so dropout masks and micro-batches continue exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lit_bar.algorithms.nonfinite import NonFiniteError, non_finite_names
from lit_bar.lightning.compat import load_dropped_loader_state
from lit_bar.lightning.resume import collect_rng_states, gather_per_rank, restore_rng_states

__all__ = ["ExactResume"]


class ExactResume:
    """Checkpoint hooks of a manual-optimization LightningModule driving a ``SAMEngine`` (``_engine``)
    with ``accumulate_grad_batches`` micro-batches per optimizer step."""

    _engine: Any
    accumulate_grad_batches: int
    _resumed: dict[str, Any]

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store each process's RNG states, and the accumulation window when the save falls inside one.

        Only tensors, lists, dicts and numbers: ``torch.load(weights_only=True)`` reads the checkpoint.
        A collective under DDP (Lightning calls this hook on every rank).

        Raises:
            NonFiniteError: A weight in the checkpoint is NaN/inf (training diverged): nothing is
                written, so the previous checkpoint stays the newest (also for ``save_weights_only``
                checkpoints, which skip the callbacks' hooks; the weights are equal on every rank).
        """
        bad = non_finite_names(checkpoint["state_dict"])  # one host sync per save
        if bad:
            more = f", ... ({len(bad) - 3} more)" if len(bad) > 3 else ""
            raise NonFiniteError(
                f"refusing to save a checkpoint at step {self.trainer.global_step}: {len(bad)} weight "
                f"tensor(s) are NaN/inf ({', '.join(bad[:3])}{more}): training diverged (lit_bar.callbacks."
                "FiniteCheck names the step and the likely cause)"
            )
        world = self.trainer.world_size
        checkpoint["rng_states"] = gather_per_rank(collect_rng_states(), world)
        window = self._engine.window_state(self._trainable(), self.accumulate_grad_batches)
        if window is not None:
            checkpoint["sam_window"] = gather_per_rank(window, world)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the RNG states and partial window for ``on_train_start`` (a fit resuming only)."""
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self._resumed = {k: checkpoint[k] for k in ("rng_states", "sam_window") if k in checkpoint}

    def _apply_resumed_state(self) -> None:
        """Restore this rank's window and RNG states: at train start, once the fit loop has built the
        training loader and its iterator (so nothing draws from the generators afterwards).

        Lightning #20550: a training loader built before the checkpoint's restore (by
        ``trainer.estimated_stepping_batches`` in a subclass's ``configure_optimizers``, say) never
        gets the checkpoint's position; it is loaded here first (``lit_bar.lightning.steps`` avoids the trap).
        """
        load_dropped_loader_state(self.trainer)
        resumed, self._resumed = self._resumed, {}
        world, rank = self.trainer.world_size, self.trainer.global_rank
        window = resumed.get("sam_window")
        if window is not None:
            if len(window) != world:
                raise ValueError(
                    f"the checkpoint was saved inside an accumulation window by {len(window)} processes; "
                    f"it resumes exactly only with {len(window)} (this run has {world}): resume from a "
                    "checkpoint at an optimizer step (ModelCheckpoint(every_n_train_steps=...) saves there)"
                )
            self._engine.load_window_state(
                window[rank], self._trainable(), self.accumulate_grad_batches, self.device
            )
        states = resumed.get("rng_states")
        if states is not None and len(states) == world:
            restore_rng_states(states[rank])
        elif states is not None:
            rank_zero_warn(
                f"the checkpoint holds the RNG states of {len(states)} processes, this run has {world}: "
                "random generators not restored (dropout masks differ from an uninterrupted run)"
            )

    def _trainable(self) -> list[torch.Tensor]:
        optimizer = self.optimizers().optimizer
        return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
