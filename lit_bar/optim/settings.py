"""SAM's settings, checked in one place for every front end (paper Alg. 1; docs/algorithms.md §2, §5).

:class:`SAMSettings` is what ``SAMModule``, ``lit_bar.hf.SAMTrainer`` and ``lit_bar.engine.SAMEngine``
take; :class:`lit_bar.optim.SAM` (plain loops) and :func:`lit_bar.optim.sam_perturbation` use the same
checks (:func:`validate_rho`, :func:`validate_precondition`, :func:`check_exclusive`,
:func:`check_adam`), so an error reads the same wherever the bad value came in. Pure Python and torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "PERTURBATIONS",
    "PRECONDITIONERS",
    "SAMSettings",
    "check_adam",
    "check_exclusive",
    "validate_precondition",
    "validate_rho",
]

#: ``"sam"``: descend the loss at w + ε; ``"functional"``: Functional-SAM (§5).
PERTURBATIONS = ("sam", "functional")
#: ε ∝ P g with Adam's diagonal preconditioner (§5).
PRECONDITIONERS = ("adam",)


def validate_rho(rho: float) -> float:
    """Return ``rho`` as a float if it is a finite number ≥ 0, else raise ``ValueError``."""
    if not isinstance(rho, int | float) or not rho >= 0 or math.isinf(rho):
        raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
    return float(rho)


def validate_precondition(precondition: str | None) -> str | None:
    """Return ``precondition`` if it is ``None`` or a known name, else raise ``ValueError``."""
    if precondition is not None and precondition not in PRECONDITIONERS:
        allowed = ", ".join(PRECONDITIONERS)
        raise ValueError(f"unknown preconditioner {precondition!r}; allowed: None, {allowed}")
    return precondition


def check_exclusive(adaptive: bool, precondition: str | None, where: str = "") -> None:
    """ASAM and the preconditioner both shape ε: refuse them together (``where`` prefixes the message)."""
    if adaptive and precondition is not None:
        named = f"precondition={precondition!r}" if where else "precondition"
        raise ValueError(f"{where}adaptive=True and {named} are exclusive: choose one way to shape ε")


def check_adam(optimizer: torch.optim.Optimizer, precondition: str | None, hint: str = "") -> None:
    """``precondition="adam"`` reads Adam's second moment: refuse another optimizer, naming it."""
    if precondition == "adam" and not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise ValueError(
            f"precondition='adam' reads Adam's second moment, but the optimizer is "
            f"{type(optimizer).__name__}; use {hint or 'torch.optim.Adam or AdamW'}, or precondition=None"
        )


@dataclass(frozen=True)
class SAMSettings:
    """What shapes one SAM step, checked when built.

    Args:
        rho: Radius ρ ≥ 0 (0: plain training, one pass).
        adaptive: ASAM's ε = ρ T² g/‖T g‖, T = |w| on weight matrices.
        m: m-sharpness chunk size (examples per ε), or ``None`` for one ε per optimizer step.
        perturbation: One of :data:`PERTURBATIONS`.
        precondition: ``None`` or one of :data:`PRECONDITIONERS` (exclusive with ``adaptive``).

    Raises:
        ValueError: Any value outside the above, named with what is allowed.
    """

    rho: float = 0.05
    adaptive: bool = False
    m: int | None = None
    perturbation: str = "sam"
    precondition: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rho", validate_rho(self.rho))
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {self.adaptive!r}")
        if self.m is not None and (isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1):
            raise ValueError(
                f"m must be a positive int (examples per perturbation chunk) or None, got {self.m!r}"
            )
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(
                f"unknown perturbation {self.perturbation!r}; allowed: {', '.join(PERTURBATIONS)}"
            )
        validate_precondition(self.precondition)
        check_exclusive(self.adaptive, self.precondition)

    def for_group(self, group: dict[str, Any], index: int) -> tuple[float, bool]:
        """ρ and the ASAM flag of an optimizer parameter group: its own ``"rho"``/``"adaptive"``
        keys, else these settings'; checked as the settings are, the message naming the group."""
        rho, adaptive = group.get("rho", self.rho), group.get("adaptive", self.adaptive)
        try:
            rho = validate_rho(rho)
        except ValueError as err:
            raise ValueError(f"param group {index}: {err}") from None
        if not isinstance(adaptive, bool):
            raise ValueError(f"param group {index}: adaptive must be True or False, got {adaptive!r}")
        check_exclusive(adaptive, self.precondition, f"param group {index}: ")
        return rho, adaptive
