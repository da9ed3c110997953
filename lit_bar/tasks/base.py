"""``LoRATask``: what every task module does the same way around its pretrained, peft-wrapped model.

A task family (GLUE, prompt few-shot, causal LM, data-to-text) subclasses it instead of
:class:`lit_bar.SAMModule` directly and keeps its network in ``self.model``. It gets:

* ``parameter_groups()`` from its ``lora`` hyperparameter: LoRA+ puts the B factors in their own
  group (:func:`lit_bar.tasks.lora.lora_parameter_groups`);
* :meth:`LoRATask.restore_adapter`: a trained ``adapter/`` folder (head included) loaded into
  ``self.model``, remembered in ``weights_source`` (what ``lit-bar predict`` checks);
* lean checkpoints: the frozen pretrained base is left out on save and refilled from the freshly
  loaded base on load (strict loading stays on, so a missing trainable tensor still fails).

Each subclass still calls ``self.save_hyperparameters(ignore=UNSAVED_HPARAMS)`` and
``plain_hparams(self.hparams)`` in its own ``__init__``: Lightning reads the init arguments from
the frame that calls ``save_hyperparameters``.
"""

from __future__ import annotations

from typing import Any

import torch
from typing_extensions import override

from lit_bar.lightning.module import SAMModule
from lit_bar.tasks.checkpoint import drop_frozen_weights, restore_frozen_weights
from lit_bar.tasks.lora import as_lora_settings, load_adapter, lora_parameter_groups

__all__ = ["LoRATask"]


class LoRATask(SAMModule):
    """Base of the task modules: LoRA+ parameter groups, adapter restore, checkpoints without the base.

    Args:
        **kwargs: :class:`lit_bar.SAMModule` arguments (optimizer, lr_scheduler, rho, ...).
    """

    model: torch.nn.Module

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weights_source: str | None = None  # trained weights' origin: an adapter folder, "checkpoint"

    def restore_adapter(self, adapter_path: str | None) -> None:
        """Load a trained peft adapter folder (LoRA factors and head) into ``self.model``; ``None``: no-op."""
        if adapter_path is not None:
            load_adapter(self.model, adapter_path)
            self.weights_source = str(adapter_path)

    @override
    def parameter_groups(self) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
        """Trainable parameters; with ``lora.loraplus_lr_ratio`` the B factors get their own group (LoRA+)."""
        return lora_parameter_groups(self, as_lora_settings(self.hparams.get("lora")))

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen pretrained base out: it is reloaded from ``model_name_or_path``."""
        super().on_save_checkpoint(checkpoint)
        drop_frozen_weights(self, checkpoint)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        restore_frozen_weights(self, checkpoint)
        self.weights_source = "checkpoint"
