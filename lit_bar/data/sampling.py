"""Seeded, disjoint sampling of train / validation / test rows from the splits a dataset has.

MeZO's protocol draws train and dev from the original train split and test from the original
validation split (docs/algorithms.md §6: 1000 / 500 / 1000). Roles drawn from the same source split
take consecutive slices of one seeded permutation of it, so they never share a row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["ROLES", "sample_roles"]

ROLES = ("train", "validation", "test")


def sample_roles(
    raw: Mapping[str, Any], sources: Mapping[str, str], sizes: Mapping[str, int | None], seed: int
) -> dict[str, Any]:
    """Draw each role's rows from its source split, without replacement and without overlap.

    Args:
        raw: Loaded splits (``datasets.DatasetDict`` or a mapping of datasets).
        sources: Role → source split name, e.g. ``{"train": "train", "validation": "train",
            "test": "validation"}``.
        sizes: Role → number of rows; ``None`` takes every row of a source no other role uses.
        seed: Seed of the permutation (deterministic per seed).

    Returns:
        Role → dataset (``Dataset.select`` of the drawn indices, in permutation order).

    Raises:
        ValueError: a source split that is not loaded; ``None`` size on a shared source; a size < 1.
    """
    out: dict[str, Any] = {}
    for source in dict.fromkeys(sources[role] for role in ROLES if role in sources):
        if source not in raw:
            raise ValueError(f"split {source!r} is not in the data; available splits: {sorted(raw)}")
        roles = [role for role in ROLES if sources.get(role) == source]
        counts = _counts(source, roles, sizes, len(raw[source]))
        order = np.random.default_rng(seed).permutation(len(raw[source]))
        start = 0
        for role in roles:
            out[role] = raw[source].select(order[start : start + counts[role]].tolist())
            start += counts[role]
    return out


def _counts(source: str, roles: list[str], sizes: Mapping[str, int | None], available: int) -> dict[str, int]:
    """Rows per role from one source; scaled down (with a warning) when the source is too small."""
    for role in roles:
        size = sizes.get(role)
        if size is None and len(roles) > 1:
            raise ValueError(
                f"num_{role}=None takes all of split {source!r}, which {roles} share; give a number"
            )
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"num_{role} must be a positive int or None, got {size!r}")
    wanted = {role: available if sizes.get(role) is None else int(sizes[role]) for role in roles}
    total = sum(wanted.values())
    if total <= available:
        return wanted
    scaled = {role: wanted[role] * available // total for role in roles}
    if min(scaled.values()) < 1:
        raise ValueError(f"split {source!r} has {available} rows, too few for {wanted}")
    rank_zero_warn(
        f"split {source!r} has {available} rows, fewer than the {total} asked for {wanted}; using {scaled}"
    )
    return scaled
