"""Seeded, disjoint sampling of train / validation / test rows from the splits a dataset has.

Two protocols, each written once here for every data module that uses it:

* **Per class** (:func:`sample_per_class`, :func:`sample_k_per_class`; LM-BFF, Gao et al. 2021, and
  Malladi et al. 2023): per class, in id order, one seeded shuffle of the train split's rows; its
  first k rows train and the next ones are the dev set, so the two never overlap and the k-shot
  train set does not depend on the dev size. ``GlueDataModule`` and ``PromptFewShotDataModule``.
* **Per role** (:func:`sample_roles`): MeZO's protocol draws train and dev from the original train
  split and test from the original validation split (docs/algorithms.md §6: 1000 / 500 / 1000).
  Roles drawn from the same source split take consecutive slices of one seeded permutation of it,
  so they never share a row. ``CausalLMDataModule``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["ROLES", "sample_k_per_class", "sample_per_class", "sample_roles"]

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


def sample_per_class(
    labels: Sequence[int],
    num_classes: int,
    k: int | None,
    dev: int | None,
    seed: int,
    short_classes: str = "raise",
) -> dict[str, list[int]]:
    """Row indices of a k-per-class train set and a dev set carved from the same rows, disjoint.

    Per class, one seeded shuffle (``random.Random(seed)``, classes in id order): the first ``k``
    rows train, the next ``dev`` rows validate (the k-shot train set does not depend on ``dev``;
    with ``k == dev`` these are LM-BFF's train/dev sets). ``k=None``: dev is the first ``dev`` rows
    of each class and every other row trains, in the original order.

    Args:
        labels: The class id of every row of the split sampled from.
        num_classes: Classes ``0 .. num_classes-1`` are sampled; other labels are never drawn.
        k: Training rows per class; ``None``: every row not carved out for dev.
        dev: Dev rows per class; ``None``: no dev set.
        seed: Seed of the shuffles.
        short_classes: A class with fewer rows than ``k + dev``: ``"raise"`` a ValueError, or
            ``"warn"`` and take what it has, train first (as LM-BFF does).

    Returns:
        ``{"train": [...], "dev": [...]}``, indices into ``labels``, each by class then shuffle order.

    Raises:
        ValueError: ``short_classes="raise"`` and a class with fewer rows than ``k + dev`` (naming
            the class and its count).
    """
    if short_classes not in ("raise", "warn"):
        raise ValueError(f"short_classes must be 'raise' or 'warn', got {short_classes!r}")
    rng = random.Random(seed)
    train: list[int] = []
    carved: list[int] = []
    for label in range(num_classes):
        rows = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(rows)
        needed = (k if k is not None else 1) + (dev or 0)
        if len(rows) < needed and short_classes == "raise":
            raise ValueError(
                f"class {label} has {len(rows)} rows in the train split, fewer than the {needed} "
                f"that k_per_class={k} + dev_per_class={dev} need"
            )
        if len(rows) < needed:
            rank_zero_warn(
                f"class {label} has {len(rows)} training rows, fewer than the {needed} that "
                f"k={k} + dev={dev} need; it gives what it has, train first"
            )
        start = k or 0
        train.extend(rows[:start])
        carved.extend(rows[start : start + (dev or 0)])
    if k is None:
        taken = set(carved)
        train = [i for i in range(len(labels)) if i not in taken]
    return {"train": train, "dev": carved}


def sample_k_per_class(
    labels: Sequence[int], k: int, seed: int, num_classes: int
) -> tuple[list[int], list[int]]:
    """LM-BFF's k-shot sets: :func:`sample_per_class` with ``k`` train and ``k`` dev rows per class.

    A class with fewer than ``2k`` rows gives what it has (train first) and a warning, as LM-BFF.

    Returns:
        ``(train, dev)`` indices into ``labels``, each sorted by class then shuffle order.
    """
    rows = sample_per_class(labels, num_classes, k, k, seed, short_classes="warn")
    return rows["train"], rows["dev"]
