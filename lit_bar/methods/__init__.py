"""BAR's successors as pure-torch pieces (no Lightning import): Flat-LoRA and Bi-LoRA.

* :class:`FlatLoRA` (Li et al., ICML 2025, arXiv:2409.14396): once per optimizer step, Gaussian
  noise on the frozen base weight of every LoRA layer, removed after the step.
* :class:`BiLoRA` (Liu et al., ICLR 2026, arXiv:2508.19564): an auxiliary low-rank pair per LoRA
  layer, trained by gradient ascent in the same backward as the primary's descent, its perturbation
  kept in a ρ-ball; never part of the exported adapter.

The Lightning callbacks are :class:`lit_bar.callbacks.FlatLoRACallback` and
:class:`lit_bar.callbacks.BiLoRACallback`.
"""

from lit_bar.methods.bilora import BiLoRA
from lit_bar.methods.flatlora import FLAT_SCHEDULES, FlatLoRA, flat_sigma, lora_layers

__all__ = ["FLAT_SCHEDULES", "BiLoRA", "FlatLoRA", "flat_sigma", "lora_layers"]
