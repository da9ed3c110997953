"""Pure-torch optimizers and SAM building blocks (no Lightning import)."""

from lit_bar.optim.functional import clean_backward, functional_backward, functional_sam_step
from lit_bar.optim.groups import LR_SCALE, apply_lr_scales
from lit_bar.optim.perturbation import adam_preconditioned, global_norm, sam_perturbation
from lit_bar.optim.sam import SAM
from lit_bar.optim.settings import SAMSettings, validate_rho

__all__ = [
    "LR_SCALE",
    "SAM",
    "SAMSettings",
    "adam_preconditioned",
    "apply_lr_scales",
    "clean_backward",
    "functional_backward",
    "functional_sam_step",
    "global_norm",
    "sam_perturbation",
    "validate_rho",
]
