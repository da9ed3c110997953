"""lit_bar: sharpness-aware (SAM) and balancedness-aware (nBAR/oBAR) finetuning for PyTorch Lightning.

Implements *Implicit Regularization of Sharpness-Aware Minimization for Scale-Invariant Problems*
(Li, Zhang, He; NeurIPS 2024). The pure-torch algorithms (:mod:`lit_bar.algorithms`,
:mod:`lit_bar.optim`, :mod:`lit_bar.methods`, :mod:`lit_bar.sharpness`) import no Lightning; the
Lightning layer is :class:`SAMModule` (:mod:`lit_bar.lightning`) and :mod:`lit_bar.callbacks`.
ARCHITECTURE.md maps the folders. The module paths of 0.1 that moved (``lit_bar.bar``,
``lit_bar.schedules``, ...) still import, with a warning (:mod:`lit_bar._moved`).
"""

from lit_bar import _moved

_moved.install()

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
    "apply_bar": "lit_bar.algorithms.bar",
    "bar_signs": "lit_bar.algorithms.bar",
    "mu_at": "lit_bar.algorithms.bar",
    "FactorPair": "lit_bar.algorithms.pairs",
    "balancedness": "lit_bar.algorithms.pairs",
    "find_lora_pairs": "lit_bar.algorithms.pairs",
    "pairs_from_names": "lit_bar.algorithms.pairs",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "SAMModule":
        from lit_bar.lightning.module import SAMModule

        return SAMModule
    if name == "BalancednessCallback":
        from lit_bar.callbacks.balancedness import BalancednessCallback

        return BalancednessCallback
    if name == "BalancednessMonitor":
        from lit_bar.callbacks.monitor import BalancednessMonitor

        return BalancednessMonitor
    raise AttributeError(f"module 'lit_bar' has no attribute {name!r}")
