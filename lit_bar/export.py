"""What a run leaves behind, in the ecosystem's formats: peft adapters, merged models, lean checkpoints.

* :func:`save_adapter` writes a peft ``save_pretrained`` folder (``adapter_config.json`` +
  ``adapter_model.safetensors``, ``modules_to_save`` such as a classifier head included) that
  ``PeftModel.from_pretrained(AutoModelFor<Task>.from_pretrained(base), folder)`` opens in plain
  transformers + peft. :func:`load_adapter` reads such a folder back into a task module's peft model,
  head included.
* GPT-2's split q/k/v projections are fused back into one stock ``c_attn`` pair on the way out and
  split again on the way in (:mod:`lit_bar.export_qkv`).
* :func:`save_merged` writes the full model with the adapter merged in (``merge_and_unload``), for
  deployment without peft.
* :func:`drop_frozen_weights` / :func:`restore_frozen_weights` keep the frozen pretrained base out of
  Lightning checkpoints of LoRA runs (the base is reloaded from ``model_name_or_path`` when the module
  is built, so resuming stays exact); :func:`plain_hparams` / :func:`as_lora_settings` store LoRA
  settings as a plain dict (and paths as strings), which ``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lit_bar.export_qkv import fuse_qkv, fused_config, refuse_qkv, saved_scale, split_qkv_modules, unfuse_qkv

if TYPE_CHECKING:  # lit_bar.tasks imports this module: a run-time import here would be circular
    from lit_bar.tasks.lora import LoraSettings

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

#: Task-module arguments kept out of ``hparams``: callables (not loadable with ``weights_only``) and
#: paths whose weights the checkpoint itself holds.
UNSAVED_HPARAMS = ["optimizer", "lr_scheduler", "init_adapter", "adapter_path"]


# --------------------------------------------------------------------- hyperparameters and checkpoints
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


def as_lora_settings(lora: LoraSettings | dict[str, Any] | None) -> LoraSettings | None:
    """:class:`LoraSettings` from a dict (as ``load_from_checkpoint`` passes the saved hparam) or as is.

    The dict holds the fields, or LightningCLI's ``{"class_path": ..., "init_args": {fields}}``.

    Raises:
        ValueError: ``lora`` is neither ``None``, a ``LoraSettings`` nor a dict of its fields.
    """
    from lit_bar.tasks.lora import LoraSettings

    if lora is None or isinstance(lora, LoraSettings):
        return lora
    if isinstance(lora, dict):
        return LoraSettings(**(lora.get("init_args", {}) if "class_path" in lora else lora))
    raise ValueError(f"lora must be LoraSettings, a dict of its fields or None, got {type(lora).__name__}")


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
    *trainable* parameter or an unexpected key still fails.
    """
    state = checkpoint["state_dict"]
    own = module.state_dict()
    for name in _frozen_names(module):
        if name not in state and name in own:
            state[name] = own[name]


# --------------------------------------------------------------------- predictions
def classification_rows(
    logits: torch.Tensor, names: list[str] | None = None, name_key: str = "label_name"
) -> list[dict[str, Any]]:
    """One row per example: the class id (``label``), its name under ``name_key``, and the probabilities.

    Args:
        logits: ``(batch, classes)`` scores; ``-inf`` marks a class an example does not have.
        names: Class names (label names, label words) by id, or ``None``.
        name_key: The row key of the name (``label_name``, ``label_word``).
    """
    probabilities = torch.softmax(logits.float(), dim=-1)
    rows = []
    for scores, probs in zip(logits.tolist(), probabilities.tolist(), strict=True):
        label = max(range(len(scores)), key=scores.__getitem__)
        row: dict[str, Any] = {"label": label}
        if names is not None:
            row[name_key] = names[label]
        row["probabilities"] = [p for s, p in zip(scores, probs, strict=True) if s != float("-inf")]
        rows.append(row)
    return rows


# --------------------------------------------------------------------- adapters out
def save_adapter(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write ``model``'s LoRA adapter (and ``modules_to_save``) as a peft ``save_pretrained`` folder.

    Split GPT-2 q/k/v projections are fused back into one ``c_attn`` pair (:mod:`lit_bar.export_qkv`).

    Args:
        model: A ``peft.PeftModel`` (a task module's ``model`` attribute).
        directory: The folder to write (created).
        base_model_name_or_path: Recorded in ``adapter_config.json`` as the base to load.

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
    state = get_peft_model_state_dict(model)
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


# --------------------------------------------------------------------- adapters in
def load_adapter(model: nn.Module, directory: str | Path) -> list[str]:
    """Load a peft adapter folder into the peft ``model``: LoRA factors *and* ``modules_to_save`` (head).

    A stock GPT-2 adapter (one pair on ``c_attn``) is split into the q/v pairs of a split model.
    Unlike ``init_adapter`` (:func:`lit_bar.tasks.lora.load_adapter_weights`, LoRA factors only, for
    starting a new task), this restores a trained model as it was.

    Args:
        model: The peft model of a task module, built with the same LoRA settings as the adapter's.
        directory: A ``save_pretrained`` folder (``adapter_config.json`` + adapter weights).

    Returns:
        The names of the loaded trainable parameters.

    Raises:
        ValueError: not an adapter folder; LoRA settings that differ from the model's; an adapter that
            lacks some trainable parameter of the model or holds tensors the model has no place for.
    """
    from peft import PeftConfig, PeftModel
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    folder = Path(directory).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise ValueError(
            f"adapter_path {str(folder)!r} is not a peft adapter folder (no adapter_config.json)"
        )
    if not isinstance(model, PeftModel):
        raise ValueError("adapter_path needs LoRA (lora: null finetunes the whole model)")
    saved = PeftConfig.from_pretrained(str(folder))
    weights = load_peft_weights(str(folder), device="cpu")
    split = split_qkv_modules(model)
    for prefix, parts in split.items():
        if f"{prefix}.lora_A.weight" in weights:
            weights = unfuse_qkv(weights, prefix, parts, saved_scale(saved, prefix))
    _check_same_settings(model.peft_config["default"], saved, fused=bool(split), where=str(folder))
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as err:
        raise ValueError(f"adapter {str(folder)!r} does not fit this model: {err}") from err
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lacking = sorted(trainable & set(result.missing_keys))
    if result.unexpected_keys or lacking:
        raise ValueError(
            f"adapter {str(folder)!r} does not match this model: tensors without a place "
            f"{list(result.unexpected_keys)[:5]}, trainable parameters it lacks {lacking[:5]}"
        )
    return sorted(trainable)


def _check_same_settings(current: Any, saved: Any, fused: bool, where: str) -> None:
    """Refuse an adapter trained with other LoRA settings (same shapes, other alpha: silently wrong)."""
    fields = ["use_dora", "use_rslora"] if fused else ["r", "lora_alpha", "use_dora", "use_rslora"]
    differ = {
        f: (getattr(saved, f), getattr(current, f))
        for f in fields
        if getattr(saved, f) != getattr(current, f)
    }
    if not fused:
        for f in ("target_modules", "modules_to_save"):
            mine, theirs = set(getattr(current, f) or []), set(getattr(saved, f) or [])
            if mine != theirs:
                differ[f] = (sorted(theirs), sorted(mine))
    if differ:
        listed = ", ".join(f"{k}: adapter {a!r}, model {b!r}" for k, (a, b) in differ.items())
        raise ValueError(
            f"adapter {where!r} was trained with other LoRA settings ({listed}); pass the same lora"
        )
