"""What a run leaves behind, in the ecosystem's formats: peft adapters, merged models, lean checkpoints.

* :func:`save_adapter` writes a peft ``save_pretrained`` folder (``adapter_config.json`` +
  ``adapter_model.safetensors``, ``modules_to_save`` such as a classifier head included) that
  ``PeftModel.from_pretrained(AutoModelFor<Task>.from_pretrained(base), folder)`` opens in plain
  transformers + peft. :func:`load_adapter` reads such a folder back into a task module's peft model,
  head included.
* GPT-2's fused ``c_attn`` is split into ``q_proj``/``k_proj``/``v_proj`` for training
  (:class:`lit_bar.tasks.generation.FusedQKVSplit`), so that q and v get separate LoRA pairs. A stock
  GPT-2 adapter puts one LoRA pair on ``c_attn``; the export fuses the pairs into it exactly::

      c_attn(x) = x W + b + s' B' A' x,   A' = [A_q; A_v]  (2r × d),   B' = ⎡B_q·s_q/s'   0      ⎤  (3d × 2r)
                                                                           ⎢  0         0      ⎥  ← k rows
                                                                           ⎣  0      B_v·s_v/s'⎦
      B' A' x = [B_q A_q x · s_q/s';  0;  B_v A_v x · s_v/s']

  with rank r' = 2r and lora_alpha chosen so that s' = s_q (alpha' = s_q · r', or s_q · √r' with
  rsLoRA), so the factors s_i/s' are 1 and the fused update is bit-for-bit the split one.
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
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

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
_QKV = ("q_proj", "k_proj", "v_proj")


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

    Split GPT-2 q/k/v projections are fused back into one ``c_attn`` pair (module docstring).

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
    for prefix, parts in _split_qkv_modules(model).items():
        state = _fuse_qkv(state, prefix, parts)
        config = _fused_config(config, prefix.rsplit(".", 1)[-1], parts)
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
    _refuse_qkv(merged)
    folder = Path(directory)
    merged.save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def _refuse_qkv(model: nn.Module) -> None:
    """Replace every split q/k/v module by a stock ``Conv1D`` holding the same (merged) weights."""
    from transformers.pytorch_utils import Conv1D

    from lit_bar.tasks.generation import FusedQKVSplit

    for parent in list(model.modules()):
        for child, module in list(parent.named_children()):
            if isinstance(module, FusedQKVSplit):
                parts = (module.q_proj, module.k_proj, module.v_proj)
                d_out, d_in = parts[0].weight.shape
                fused = Conv1D(3 * d_out, d_in).to(parts[0].weight)
                with torch.no_grad():
                    fused.weight.copy_(torch.cat([p.weight.T for p in parts], dim=1))
                    fused.bias.copy_(torch.cat([p.bias for p in parts]))
                setattr(parent, child, fused)


def _split_qkv_modules(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{c_attn name in the peft state dict: {part: its LoRA layer or None}}`` for adapted split modules."""
    from lit_bar.tasks.generation import FusedQKVSplit

    found = {}
    for name, module in model.named_modules():
        if isinstance(module, FusedQKVSplit):
            parts = {p: getattr(module, p) for p in _QKV}
            parts = {p: (m if hasattr(m, "lora_A") else None) for p, m in parts.items()}
            if any(parts.values()):
                found[name] = parts
    return found


def _part_layout(parts: dict[str, Any]) -> tuple[list[tuple[int, str, Any]], int, int]:
    """``[(position among q/k/v, part, layer)]`` of the adapted parts, the total rank and the width d."""
    adapted = [(i, p, parts[p]) for i, p in enumerate(_QKV) if parts[p] is not None]
    for _, part, layer in adapted:
        if layer.use_dora.get("default") or layer.lora_bias.get("default"):
            raise ValueError(
                f"{part}: DoRA / lora_bias adapters on split q/k/v cannot be fused into one c_attn LoRA "
                "pair; export a merged model instead (AdapterExport(merged_dirname='merged'))"
            )
    rank = sum(layer.r["default"] for _, _, layer in adapted)
    width = adapted[0][2].out_features
    return adapted, rank, width


def _fuse_qkv(state: dict[str, torch.Tensor], prefix: str, parts: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Replace the parts' ``lora_A``/``lora_B`` entries by one fused pair (module docstring)."""
    adapted, rank, width = _part_layout(parts)
    target_scale = adapted[0][2].scaling["default"]
    first = state[f"{prefix}.{adapted[0][1]}.lora_A.weight"]
    fused_a = first.new_zeros(rank, first.shape[1])
    fused_b = first.new_zeros(3 * width, rank)
    offset = 0
    for position, part, layer in adapted:
        a, b = state.pop(f"{prefix}.{part}.lora_A.weight"), state.pop(f"{prefix}.{part}.lora_B.weight")
        ratio = layer.scaling["default"] / target_scale
        r = a.shape[0]
        fused_a[offset : offset + r] = a
        fused_b[position * width : (position + 1) * width, offset : offset + r] = (
            b if ratio == 1 else b * ratio
        )
        offset += r
    state[f"{prefix}.lora_A.weight"] = fused_a
    state[f"{prefix}.lora_B.weight"] = fused_b
    return state


def _fused_config(config: Any, fused_name: str, parts: dict[str, Any]) -> Any:
    """The LoRA config of the stock model: ``c_attn`` targeted with rank Σr and alpha giving s' = s_q."""
    adapted, rank, _ = _part_layout(parts)
    if not isinstance(config.target_modules, set | list | tuple):
        raise ValueError(
            f"target_modules {config.target_modules!r} is a pattern; split q/k/v can only be fused "
            "back for a list of module names"
        )
    scale = adapted[0][2].scaling["default"]
    alpha = scale * (math.sqrt(rank) if config.use_rslora else rank)
    config.target_modules = {t for t in config.target_modules if t not in _QKV} | {fused_name}
    if config.target_modules == {fused_name} and not config.rank_pattern and not config.alpha_pattern:
        config.r, config.lora_alpha = rank, alpha
    else:  # other targets keep r and lora_alpha
        config.rank_pattern = {**config.rank_pattern, fused_name: rank}
        config.alpha_pattern = {**config.alpha_pattern, fused_name: alpha}
    config.fan_in_fan_out = True  # c_attn is a transformers Conv1D (weight stored d_in × d_out)
    return config


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
    split = _split_qkv_modules(model)
    for prefix, parts in split.items():
        if f"{prefix}.lora_A.weight" in weights:
            weights = _unfuse_qkv(weights, prefix, parts, _saved_scale(saved, prefix))
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


def _saved_scale(config: Any, prefix: str) -> float:
    """The LoRA scaling s = alpha / r (alpha / √r with rsLoRA) ``config`` gives the module ``prefix``."""
    r = _pattern_value(config.rank_pattern, prefix, config.r)
    alpha = _pattern_value(config.alpha_pattern, prefix, config.lora_alpha)
    return alpha / (math.sqrt(r) if config.use_rslora else r)


def _pattern_value(pattern: dict[str, Any], name: str, default: Any) -> Any:
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _unfuse_qkv(
    weights: dict[str, torch.Tensor], prefix: str, parts: dict[str, Any], saved_scale: float
) -> dict[str, torch.Tensor]:
    """Split a fused ``c_attn`` pair into the model's q/k/v pairs; the other blocks of B must be zero."""
    adapted, rank, width = _part_layout(parts)
    a, b = weights.pop(f"{prefix}.lora_A.weight"), weights.pop(f"{prefix}.lora_B.weight")
    if a.shape[0] != rank or b.shape != (3 * width, rank):
        raise ValueError(
            f"{prefix}: the adapter's c_attn pair has rank {a.shape[0]}, this model's q/k/v pairs "
            f"{rank} in all (load it with the LoRA settings of the run that wrote it)"
        )
    rest = b.clone()
    offset = 0
    for position, part, layer in adapted:
        r = layer.r["default"]
        rows = slice(position * width, (position + 1) * width)
        ratio = saved_scale / layer.scaling["default"]
        block = b[rows, offset : offset + r]
        weights[f"{prefix}.{part}.lora_A.weight"] = a[offset : offset + r].clone()
        weights[f"{prefix}.{part}.lora_B.weight"] = block.clone() if ratio == 1 else block * ratio
        rest[rows, offset : offset + r] = 0
        offset += r
    if rest.any():
        raise ValueError(
            f"{prefix}: the adapter's c_attn update is not block-diagonal over this model's adapted "
            f"{[p for _, p, _ in adapted]}; load it with split_qkv=False and target_modules [c_attn]"
        )
    return weights


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
