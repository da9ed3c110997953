"""The methods the benchmark and the GPU check train, by row name: :class:`lit_bar.SAMModule`'s
arguments, whether BAR runs (:class:`lit_bar.BalancednessCallback`, nBAR), and BAR's successors'
callbacks. A new method is a new row here; each measurement picks its rows by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["SAM_MODULE_ROWS", "SUCCESSORS"]

#: row → (SAMModule arguments, BalancednessCallback on?): ρ = 0 is plain LoRA; Functional-SAM and
#: Adam-preconditioned SAM (docs/algorithms.md) are SAMModule's ``perturbation``/``precondition``.
SAM_MODULE_ROWS: dict[str, tuple[dict[str, Any], bool]] = {
    "LoRA": ({"rho": 0.0}, False),
    "LoRA-nBAR": ({"rho": 0.0}, True),
    "SAM": ({"rho": 0.05}, False),
    "FSAM": ({"rho": 0.05, "perturbation": "functional"}, False),
    "PSAM": ({"rho": 0.05, "precondition": "adam"}, False),
    "PSAM+FSAM": ({"rho": 0.05, "perturbation": "functional", "precondition": "adam"}, False),
    "Flat-LoRA": ({"rho": 0.0}, False),
    "Bi-LoRA": ({"rho": 0.0}, False),
}


def _flat_lora() -> Any:
    from lit_bar.callbacks import FlatLoRACallback

    return FlatLoRACallback(rho=0.05, schedule="constant")  # constant: the noise is drawn at any σ


def _bi_lora() -> Any:
    from lit_bar.callbacks import BiLoRACallback

    return BiLoRACallback(rho=0.05)


#: Rows of BAR's successors (ρ = 0 in SAMModule: one forward/backward per step): row → a factory of
#: their Lightning callback (lit_bar.callbacks), added to the row's Trainer.
SUCCESSORS: dict[str, Callable[[], Any]] = {"Flat-LoRA": _flat_lora, "Bi-LoRA": _bi_lora}
