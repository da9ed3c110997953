"""The SAM step (paper Alg. 1), written once for every front end, in pure torch (docs/algorithms.md §7).

- :mod:`lit_bar.engine.core`: :class:`SAMEngine`, the window of micro-batches and its bookkeeping.
- :mod:`lit_bar.engine.passes`: the passes by name: the ascent (``autograd.grad``, or ``backward``
  under FSDP2), the descent (plain or Functional-SAM's seeded one), the perturbed-weights context.
- :mod:`lit_bar.engine.front`: :class:`FrontEnd`, what a framework supplies (loss, loss scaling,
  backward, no-sync), and the one all-reduce of the ascent gradient under DDP.

What varies between front ends (Lightning's Strategy/Precision, accelerate's Accelerator) comes in
through :class:`FrontEnd`; the engine imports no framework.
"""

from lit_bar.engine.core import SAMEngine
from lit_bar.engine.front import FrontEnd, all_reduce_sum
from lit_bar.optim.settings import PERTURBATIONS, SAMSettings

__all__ = ["PERTURBATIONS", "FrontEnd", "SAMEngine", "SAMSettings", "all_reduce_sum"]
