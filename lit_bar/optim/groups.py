"""Per-group learning-rate multipliers (LoRA+: B factors at lr × ratio), for any torch optimizer.

A parameter group may carry ``"lr_scale": c``. Optimizer factories (LightningCLI's
``OptimizerCallable``, ``functools.partial``) fix one ``lr`` for all groups; once the optimizer is
built, :func:`apply_lr_scales` turns that group's ``lr`` into ``lr × c``, before any LR scheduler
records its base learning rates, so schedules scale every group alike. Pure torch.
"""

from __future__ import annotations

import torch

__all__ = ["LR_SCALE", "apply_lr_scales"]

#: The parameter-group key holding a learning-rate multiplier.
LR_SCALE = "lr_scale"


def apply_lr_scales(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Multiply each group's ``lr`` by its ``lr_scale`` (kept in the group, so it shows what was done).

    Call once, right after building the optimizer and before building an LR scheduler on it; a
    group already scaled (``"lr_scaled": True``, set here) is left alone, so a second call is harmless.

    Raises:
        ValueError: An ``lr_scale`` that is not a number > 0.
    """
    for i, group in enumerate(optimizer.param_groups):
        scale = group.get(LR_SCALE)
        if scale is None or group.get("lr_scaled"):
            continue
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            raise ValueError(f"param group {i}: {LR_SCALE} must be a number > 0, got {scale!r}")
        group["lr"] = group["lr"] * scale
        group["lr_scaled"] = True
    return optimizer
