"""LoRA settings exposed to configs, turned into a peft ``LoraConfig`` (r, alpha, dropout, targets, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["LoraSettings", "apply_lora", "load_adapter_weights"]


@dataclass
class LoraSettings:
    """peft LoRA options, as a config section (``model.init_args.lora``).

    Args:
        r: Rank of each adapter.
        alpha: Scaling numerator (ΔW = alpha / r · B A; alpha / √r with ``use_rslora``).
        dropout: Dropout on the adapter input.
        target_modules: Module names to adapt (e.g. ``[query, value]``); ``None`` takes peft's
            default for the architecture.
        modules_to_save: Modules trained in full beside the adapters (e.g. a classifier head).
        use_dora: DoRA (magnitude + direction); BAR still acts on the (A, B) pair.
        use_rslora: Rank-stabilised scaling alpha / √r.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    modules_to_save: list[str] | None = None
    use_dora: bool = False
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"lora.r must be a positive int, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")


def apply_lora(model: nn.Module, settings: LoraSettings | None) -> nn.Module:
    """Wrap ``model`` with peft LoRA per ``settings``; ``None`` leaves it for full finetuning."""
    if settings is None:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        modules_to_save=settings.modules_to_save,
        use_dora=settings.use_dora,
        use_rslora=settings.use_rslora,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        names = sorted(
            {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Embedding)}
        )
        raise ValueError(f"{err} — module names available to target: {names[:30]}") from err


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
    from pathlib import Path

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
