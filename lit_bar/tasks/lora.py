"""LoRA settings for configs: every field of peft's ``LoraConfig`` under peft's name, plus LoRA+.

    ΔW = s · B A,   s = lora_alpha / r   (lora_alpha / √r with ``use_rslora``)     (Hu et al. 2021)
    LoRA+ (Hayou et al. 2024): B learns at lr × loraplus_lr_ratio, A (and the rest) at lr

:class:`LoraSettings` is generated from the installed peft's ``LoraConfig`` dataclass, so its fields,
types, defaults and ``--help`` texts are peft's own (one source of truth): ``r``, ``lora_alpha``,
``lora_dropout``, ``target_modules`` (a list, a regex, or ``"all-linear"``), ``bias``,
``init_lora_weights``, ``rank_pattern``, ``alpha_pattern``, ``layers_to_transform``, ``use_dora``,
``use_rslora``, ``modules_to_save``, ... Left out are peft's bookkeeping fields, which the task
module decides (``task_type``, ``inference_mode``, ``base_model_name_or_path``, ...). lit_bar adds:

- ``loraplus_lr_ratio``: LoRA+; the task module puts every B factor (the ``y`` of each pair,
  :func:`lit_bar.algorithms.pairs.module_pairs`) in its own optimizer group with ``lr × ratio``
  (:func:`lora_parameter_groups`, applied by :func:`lit_bar.optim.apply_lr_scales`).
- ``alpha`` / ``dropout``: lit_bar's earlier names of ``lora_alpha`` / ``lora_dropout``; setting
  one is an error that names peft's key. (Not a silent alias: LightningCLI merges a config over
  the task module's default settings, so "both given" could not be told from "one given".)
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from torch import nn

from lit_bar.algorithms.pairs import module_pairs
from lit_bar.optim.groups import LR_SCALE

__all__ = [
    "LoraSettings",
    "apply_lora",
    "as_lora_settings",
    "load_adapter",
    "load_adapter_weights",
    "lora_parameter_groups",
]

#: peft's bookkeeping fields: set by the task module and ``get_peft_model``, not by a config.
_BOOKKEEPING = (
    "task_type",
    "peft_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
)
#: Initialisations that need a pass over data (``initialize_lora_eva_weights``, ``preprocess_corda``,
#: ``preprocess_loraga``) before or after ``get_peft_model``, which the task modules do not run.
_DATA_DRIVEN_INITS = ("eva", "corda", "lora_ga")
_RENAMED = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
_EXTRA_HELP = {
    "loraplus_lr_ratio": "LoRA+ (Hayou et al. 2024): the B factors learn at lr × this ratio (e.g. 16); "
    "None: one learning rate for all.",
    "alpha": "Renamed lora_alpha (peft's name); setting it is an error that says so.",
    "dropout": "Renamed lora_dropout (peft's name); setting it is an error that says so.",
}


def _peft_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """``(name, type, field)`` of every configurable ``LoraConfig`` field, peft's defaults kept."""
    from peft import LoraConfig

    hints = typing.get_type_hints(LoraConfig)
    out = []
    for f in dataclasses.fields(LoraConfig):
        if f.name in _BOOKKEEPING or not f.init:
            continue
        default = (
            dataclasses.field(default=f.default, metadata=f.metadata)
            if f.default is not dataclasses.MISSING
            else dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
        )
        out.append((f.name, hints[f.name], default))
    return out


def _docstring(fields: list[tuple[str, Any, dataclasses.Field]]) -> str:
    """A Google-style docstring whose ``Args`` are peft's help texts (jsonargparse's ``--help``)."""
    lines = ["peft LoRA options, as a config section (``model.init_args.lora``); see the module docstring."]
    lines += ["", "Args:"]
    for name, _, f in fields:
        text = " ".join(str(f.metadata.get("help") or _EXTRA_HELP.get(name, name)).split())
        lines.append(f"    {name}: {text}")
    return "\n".join(lines)


class _LoraSettingsMethods:
    """What :class:`LoraSettings` adds to its generated fields: validation and ``to_peft``."""

    def __post_init__(self) -> None:
        for old, name in _RENAMED.items():
            if getattr(self, old) is not None:
                raise ValueError(
                    f"lora.{old} is now lora.{name} (peft's name): write {name}: {getattr(self, old)!r}"
                )
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"lora.r must be a positive int, got {self.r!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        ratio = self.loraplus_lr_ratio
        if ratio is not None and (isinstance(ratio, bool) or not ratio > 0):
            raise ValueError(f"lora.loraplus_lr_ratio must be a number > 0 or None, got {ratio!r}")
        for name, hint in _PEFT_HINTS.items():  # peft checks some of its Literal fields only when applied
            allowed = typing.get_args(hint)
            if typing.get_origin(hint) is typing.Literal and getattr(self, name) not in allowed:
                raise ValueError(f"lora.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        init = self.init_lora_weights
        if isinstance(init, str) and init.startswith(_DATA_DRIVEN_INITS):
            raise ValueError(
                f"lora.init_lora_weights={init!r} needs a pass over data that lit_bar's task modules do not "
                "run; use True, False, 'gaussian', 'pissa', 'olora', 'orthogonal' or 'loftq'"
            )
        try:
            self.to_peft()
        except (TypeError, ValueError) as err:
            raise ValueError(f"peft's LoraConfig rejects these lora settings: {err}") from err

    def to_peft(self) -> Any:
        """The peft ``LoraConfig`` of these settings (nested configs saved as dicts are rebuilt)."""
        from peft import LoraConfig

        values = {name: _revive(getattr(self, name), hint) for name, hint in _PEFT_HINTS.items()}
        if values["init_lora_weights"] != "loftq":  # jsonargparse fills in a LoftQConfig peft would warn of
            values.pop("loftq_config")
        return LoraConfig(**values)


def _revive(value: Any, hint: Any) -> Any:
    """A dict back into the dataclass ``hint`` names (``dataclasses.asdict`` flattens nested configs)."""
    if not isinstance(value, dict):
        return value
    options = typing.get_args(hint) or (hint,)
    if dict in options or any(typing.get_origin(o) is dict for o in options):
        return value
    classes = [o for o in options if dataclasses.is_dataclass(o)]
    return classes[0](**value) if len(classes) == 1 else value


_FIELDS = _peft_fields()
_PEFT_HINTS = {name: hint for name, hint, _ in _FIELDS}
_ALL_FIELDS = [
    *_FIELDS,
    ("loraplus_lr_ratio", float | None, dataclasses.field(default=None)),
    ("alpha", int | float | None, dataclasses.field(default=None)),
    ("dropout", float | None, dataclasses.field(default=None)),
]
LoraSettings = dataclasses.make_dataclass("LoraSettings", _ALL_FIELDS, bases=(_LoraSettingsMethods,))
LoraSettings.__module__ = __name__
LoraSettings.__doc__ = _docstring(_ALL_FIELDS)


def apply_lora(model: nn.Module, settings: LoraSettings | None) -> nn.Module:
    """Wrap ``model`` with peft LoRA per ``settings``; ``None`` leaves it for full finetuning."""
    if settings is None:
        return model
    from peft import get_peft_model

    try:
        return get_peft_model(model, settings.to_peft())
    except ValueError as err:
        names = sorted(
            {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Embedding)}
        )
        raise ValueError(f"{err} — module names available to target: {names[:30]}") from err


def lora_parameter_groups(
    module: nn.Module, settings: LoraSettings | None
) -> list[nn.Parameter] | list[dict[str, Any]]:
    """The trainable parameters of ``module`` for its optimizer, split for LoRA+ when asked.

    Without ``settings.loraplus_lr_ratio``: one flat list. With it: ``[{"params": rest},
    {"params": B factors, "lr_scale": ratio}]``, the B factors being the ``y`` of every pair of
    :func:`lit_bar.algorithms.pairs.module_pairs`; :func:`lit_bar.optim.apply_lr_scales` then multiplies that
    group's learning rate once the optimizer exists (``SAMModule.configure_optimizers`` does).

    Raises:
        ValueError: A ratio is set but ``module`` has no trainable LoRA pair.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    ratio = None if settings is None else settings.loraplus_lr_ratio
    if ratio is None:
        return params
    b_ids = {id(pair.y) for pair in module_pairs(module)}
    b_factors = [p for p in params if id(p) in b_ids]
    if not b_factors:
        raise ValueError(
            f"lora.loraplus_lr_ratio={ratio!r} needs LoRA B factors, but {type(module).__name__} has no "
            "trainable LoRA pair"
        )
    rest = [p for p in params if id(p) not in b_ids]
    return [*([{"params": rest}] if rest else []), {"params": b_factors, LR_SCALE: float(ratio)}]


def load_adapter_weights(model: nn.Module, path: str) -> list[str]:
    """Copy LoRA factors (``lora_*`` tensors only, no head) from ``path`` into the peft ``model``.

    For GLUE's MRPC/RTE/STS-B, which start from the MNLI LoRA weights with a fresh head.

    Args:
        model: The peft-wrapped model to load into.
        path: A peft adapter folder (``save_pretrained``) or a Lightning ``.ckpt`` of a module that
            keeps the peft model as its ``model`` attribute (lit_bar's task modules do).

    Returns:
        The names of the loaded tensors.

    Raises:
        ValueError: the path does not exist, holds no LoRA tensors, or some match no parameter here.
    """
    import torch
    from peft.utils import load_peft_weights

    source = Path(path).expanduser()
    if source.is_dir():  # peft drops the adapter name from saved keys: put the active one back
        adapter = getattr(model, "active_adapter", "default")
        weights = {
            _with_adapter(k, adapter): v for k, v in load_peft_weights(str(source), device="cpu").items()
        }
    elif source.is_file():
        state = torch.load(source, map_location="cpu", weights_only=True).get("state_dict", {})
        weights = {k.removeprefix("model."): v for k, v in state.items()}
    else:
        raise ValueError(f"adapter path {str(source)!r} is neither a peft adapter folder nor a .ckpt file")
    weights = {k: v for k, v in weights.items() if "lora_" in k}
    unexpected = list(model.load_state_dict(weights, strict=False).unexpected_keys) if weights else []
    if not weights:
        raise ValueError(f"{str(source)!r} holds no LoRA tensors (names containing 'lora_')")
    if unexpected:
        raise ValueError(
            f"LoRA tensors of {str(source)!r} match no parameter of this model: {unexpected[:5]}"
        )
    return sorted(weights)


def _with_adapter(key: str, adapter: str) -> str:
    """``...query.lora_A.weight`` → ``...query.lora_A.<adapter>.weight`` (the module's parameter name)."""
    parts = key.split(".")
    at = next((i for i, part in enumerate(parts) if part.startswith("lora_")), None)
    return key if at is None else ".".join([*parts[: at + 1], adapter, *parts[at + 1 :]])


def as_lora_settings(lora: LoraSettings | dict[str, Any] | None) -> LoraSettings | None:
    """:class:`LoraSettings` from a dict (as ``load_from_checkpoint`` passes the saved hparam) or as is.

    The dict holds the fields, or LightningCLI's ``{"class_path": ..., "init_args": {fields}}``.

    Raises:
        ValueError: ``lora`` is neither ``None``, a ``LoraSettings`` nor a dict of its fields.
    """
    if lora is None or isinstance(lora, LoraSettings):
        return lora
    if isinstance(lora, dict):
        return LoraSettings(**(lora.get("init_args", {}) if "class_path" in lora else lora))
    raise ValueError(f"lora must be LoraSettings, a dict of its fields or None, got {type(lora).__name__}")


def load_adapter(model: nn.Module, directory: str | Path) -> list[str]:
    """Load a peft adapter folder into the peft ``model``: LoRA factors *and* ``modules_to_save`` (head).

    A stock GPT-2 adapter (one pair on ``c_attn``) is split into the q/v pairs of a split model.
    Unlike ``init_adapter`` (:func:`load_adapter_weights`, LoRA factors only, for
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

    from lit_bar.io.qkv import saved_scale, split_qkv_modules, unfuse_qkv

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
