"""Pure-torch optimizers and SAM building blocks (no Lightning import)."""

from lit_bar.optim.perturbation import adam_preconditioned, global_norm, sam_perturbation
from lit_bar.optim.sam import SAM, validate_rho

__all__ = ["SAM", "adam_preconditioned", "global_norm", "sam_perturbation", "validate_rho"]
