"""LoRA settings exposed to configs, turned into a peft ``LoraConfig`` (r, alpha, dropout, targets, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["LoraSettings", "apply_lora"]


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
        names = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Embedding)})
        raise ValueError(f"{err} — module names available to target: {names[:30]}") from err
