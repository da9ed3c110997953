"""lit_bar: sharpness-aware (SAM) and balancedness-aware (nBAR/oBAR) finetuning for PyTorch Lightning.

Implements *Implicit Regularization of Sharpness-Aware Minimization for Scale-Invariant Problems*
(Li, Zhang, He; NeurIPS 2024). The pure-torch algorithms (:mod:`lit_bar.pairs`, :mod:`lit_bar.bar`,
:mod:`lit_bar.optim`) import no Lightning; the Lightning layer is :class:`SAMModule` and
:class:`BalancednessCallback`.
"""

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


#: Names loaded on first use (``import lit_bar`` imports neither torch nor Lightning: ``lit-bar
#: --version`` is instant, and pure-torch users never import Lightning).
_LAZY = {
    "apply_bar": "lit_bar.bar",
    "bar_signs": "lit_bar.bar",
    "mu_at": "lit_bar.bar",
    "FactorPair": "lit_bar.pairs",
    "balancedness": "lit_bar.pairs",
    "find_lora_pairs": "lit_bar.pairs",
    "pairs_from_names": "lit_bar.pairs",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
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
