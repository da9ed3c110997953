"""What a task module's Lightning checkpoint holds: plain hyperparameters and no frozen base weights.

* :func:`plain_hparams` stores LoRA settings as a plain dict (and paths as strings), which
  ``torch.load(weights_only=True)`` accepts; :data:`UNSAVED_HPARAMS` names the init arguments kept
  out of ``hparams``.
* :func:`drop_frozen_weights` / :func:`restore_frozen_weights` keep the frozen pretrained base out of
  Lightning checkpoints of LoRA runs (the base is reloaded from ``model_name_or_path`` when the module
  is built, so resuming stays exact).

Used by :class:`lit_bar.tasks.base.LoRATask` and :class:`lit_bar.callbacks.AdapterExport`; re-exported
by :mod:`lit_bar.export`, their earlier home.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn

__all__ = ["UNSAVED_HPARAMS", "drop_frozen_weights", "plain_hparams", "restore_frozen_weights"]

#: Task-module arguments kept out of ``hparams``: callables (not loadable with ``weights_only``) and
#: paths whose weights the checkpoint itself holds.
UNSAVED_HPARAMS = ["optimizer", "lr_scheduler", "init_adapter", "adapter_path"]


def plain_hparams(hparams: dict[str, Any]) -> None:
    """Make ``hparams`` loadable by ``torch.load(weights_only=True)``, in place.

    Dataclasses (:class:`LoraSettings`) become dicts (``dataclasses.asdict``), paths strings; lists,
    tuples and dicts are converted item by item.
    """
    for key, value in hparams.items():
        hparams[key] = _plain(value)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _frozen_names(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def drop_frozen_weights(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Remove ``module``'s frozen parameters from ``checkpoint["state_dict"]`` (in ``on_save_checkpoint``).

    The trainable parameters, every buffer and the optimizer state stay; with LoRA the checkpoint
    shrinks to the adapters and the trained head.
    """
    frozen = _frozen_names(module)
    if frozen:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}


def restore_frozen_weights(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Fill the frozen parameters a checkpoint lacks with ``module``'s own (call in ``on_load_checkpoint``).

    The module has just loaded them from ``model_name_or_path``; loading then stays strict, so a missing
    *trainable* parameter or an unexpected key still fails. Under FSDP2 the strategy has loaded the
    weights into the sharded module already (non-strictly: :meth:`lit_bar.SAMModule.configure_model`)
    and the checkpoint holds no ``state_dict`` any more: nothing to fill then.
    """
    if "state_dict" not in checkpoint:
        return
    state = checkpoint["state_dict"]
    own = module.state_dict()
    for name in _frozen_names(module):
        if name not in state and name in own:
            state[name] = own[name]
