"""lit_bar: sharpness-aware (SAM) and balancedness-aware (nBAR/oBAR) finetuning for PyTorch Lightning.

Implements *Implicit Regularization of Sharpness-Aware Minimization for Scale-Invariant Problems*
(Li, Zhang, He; NeurIPS 2024). The pure-torch algorithms (:mod:`lit_bar.pairs`, :mod:`lit_bar.bar`,
:mod:`lit_bar.optim`) import no Lightning; the Lightning layer is :class:`SAMModule` and
:class:`BalancednessCallback`.
"""

from lit_bar.bar import apply_bar, bar_signs, mu_at
from lit_bar.pairs import FactorPair, balancedness, find_lora_pairs, pairs_from_names

__version__ = "0.1.0"

__all__ = [
    "BalancednessCallback",
    "BalancednessMonitor",
    "FactorPair",
    "SAMModule",
    "apply_bar",
    "balancedness",
    "bar_signs",
    "find_lora_pairs",
    "mu_at",
    "pairs_from_names",
]


def __getattr__(name: str):  # the Lightning layer loads on first use, so pure-torch users never import it
    if name == "SAMModule":
        from lit_bar.sam_module import SAMModule

        return SAMModule
    if name == "BalancednessCallback":
        from lit_bar.callbacks.balancedness import BalancednessCallback

        return BalancednessCallback
    if name == "BalancednessMonitor":
        from lit_bar.callbacks.monitor import BalancednessMonitor

        return BalancednessMonitor
    raise AttributeError(f"module 'lit_bar' has no attribute {name!r}")
