"""lit_bar inside the transformers ``Trainer``: :class:`SAMTrainer` (SAM step) and its callbacks.

transformers is imported on first use of a name from here, so ``import lit_bar`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BalancednessTrainerCallback",
    "BiLoRATrainerCallback",
    "FlatLoRATrainerCallback",
    "SAMTrainer",
    "run_first",
]

_LAZY = {
    "BalancednessTrainerCallback": "lit_bar.hf.callback",
    "BiLoRATrainerCallback": "lit_bar.hf.successors",
    "FlatLoRATrainerCallback": "lit_bar.hf.successors",
    "SAMTrainer": "lit_bar.hf.trainer",
    "run_first": "lit_bar.hf.callback",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_bar.hf' has no attribute {name!r}")
