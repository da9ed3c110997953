"""What a run leaves behind, in the ecosystem's formats: peft adapters and merged models.

* :func:`save_adapter` writes a peft ``save_pretrained`` folder (``adapter_config.json`` +
  ``adapter_model.safetensors``, ``modules_to_save`` such as a classifier head included) that
  ``PeftModel.from_pretrained(AutoModelFor<Task>.from_pretrained(base), folder)`` opens in plain
  transformers + peft. :func:`load_adapter` (:mod:`lit_bar.tasks.lora`) reads such a folder back into
  a task module's peft model, head included.
* GPT-2's split q/k/v projections are fused back into one stock ``c_attn`` pair on the way out and
  split again on the way in (:mod:`lit_bar.io.qkv`).
* :func:`save_merged` writes the full model with the adapter merged in (``merge_and_unload``), for
  deployment without peft.

This is the artifact layer: it imports the task layer, never the reverse. The checkpoint helpers
(:func:`drop_frozen_weights`, :func:`restore_frozen_weights`, :func:`plain_hparams`,
``UNSAVED_HPARAMS``; :mod:`lit_bar.tasks.checkpoint`), :func:`as_lora_settings` and
:func:`load_adapter` (:mod:`lit_bar.tasks.lora`) and :func:`classification_rows`
(:mod:`lit_bar.tasks.metrics`) live with the task modules and are re-exported here, their earlier home.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_bar.io.qkv import fuse_qkv, fused_config, refuse_qkv, split_qkv_modules
from lit_bar.tasks.checkpoint import (
    UNSAVED_HPARAMS,
    drop_frozen_weights,
    plain_hparams,
    restore_frozen_weights,
)
from lit_bar.tasks.lora import as_lora_settings, load_adapter
from lit_bar.tasks.metrics import classification_rows

__all__ = [
    "UNSAVED_HPARAMS",
    "as_lora_settings",
    "classification_rows",
    "drop_frozen_weights",
    "load_adapter",
    "plain_hparams",
    "restore_frozen_weights",
    "save_adapter",
    "save_merged",
]


# --------------------------------------------------------------------- adapters out
def save_adapter(
    model: nn.Module,
    directory: str | Path,
    base_model_name_or_path: str | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model``'s LoRA adapter (and ``modules_to_save``) as a peft ``save_pretrained`` folder.

    Split GPT-2 q/k/v projections are fused back into one ``c_attn`` pair (:mod:`lit_bar.io.qkv`).

    Args:
        model: A ``peft.PeftModel`` (a task module's ``model`` attribute).
        directory: The folder to write (created).
        base_model_name_or_path: Recorded in ``adapter_config.json`` as the base to load.
        state: The adapter's tensors (``get_peft_model_state_dict``'s keys) when gathered already,
            e.g. the full tensors of an FSDP2-sharded model; ``None`` reads them from ``model``.

    Returns:
        The folder.

    Raises:
        ValueError: ``model`` carries no LoRA adapter, or split projections cannot be fused (DoRA, LoRA bias).
    """
    from peft import PeftModel
    from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
    from safetensors.torch import save_file

    if not isinstance(model, PeftModel):
        raise ValueError(
            f"no LoRA adapter to save: the model is a {type(model).__name__}, not a peft model "
            "(lora: null finetunes every weight; use save_merged for a full model)"
        )
    config = copy.deepcopy(model.peft_config["default"])
    state = get_peft_model_state_dict(model) if state is None else state
    for prefix, parts in split_qkv_modules(model).items():
        state = fuse_qkv(state, prefix, parts)
        config = fused_config(config, prefix.rsplit(".", 1)[-1], parts)
    if base_model_name_or_path is not None:
        config.base_model_name_or_path = base_model_name_or_path
    config.inference_mode = True
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    save_file(tensors, str(folder / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def save_merged(model: nn.Module, directory: str | Path, tokenizer: Any = None) -> Path:
    """Write the full model with the adapter merged in (``merge_and_unload``), loadable without peft.

    ``model`` itself is left untouched (a copy is merged). Split GPT-2 q/k/v projections are fused back
    into ``c_attn``, so the folder is a stock checkpoint of the base architecture.

    Args:
        model: A ``peft.PeftModel``, or a plain transformers model (full finetuning).
        directory: The folder to write (created).
        tokenizer: Saved beside the model when given.
    """
    from peft import PeftModel

    merged = copy.deepcopy(model)
    if isinstance(merged, PeftModel):
        merged = merged.merge_and_unload()
    refuse_qkv(merged)
    folder = Path(directory)
    merged.save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
