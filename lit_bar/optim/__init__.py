"""Pure-torch optimizers and SAM building blocks (no Lightning import)."""

from lit_bar.optim.functional import clean_backward, functional_backward, functional_sam_step
from lit_bar.optim.perturbation import adam_preconditioned, global_norm, sam_perturbation
from lit_bar.optim.sam import SAM, validate_rho

__all__ = [
    "SAM",
    "adam_preconditioned",
    "clean_backward",
    "functional_backward",
    "functional_sam_step",
    "global_norm",
    "sam_perturbation",
    "validate_rho",
]
