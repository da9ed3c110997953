"""The 95 % intervals the experiments report: Student's t (means over seeds, paired differences,
Welch's difference of two means) and the bootstrap interval of a median (benchmark ratios).

No scipy: the t quantile comes from the table for whole degrees of freedom up to 30 and from the
Cornish-Fisher expansion elsewhere (|error| < 0.004 from df = 3 on).
"""

from __future__ import annotations

import math
import random
import statistics

__all__ = ["bootstrap_median_ci", "mean_ci", "t_quantile_975", "welch_ci"]

#: The 0.975 quantiles of Student's t for df = 1 .. 30 (any statistics table).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile_975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (``df`` may be fractional:
    Welch's interval).

    The table for whole ``df`` ≤ 30; below 3 a fractional ``df`` is rounded down (the conservative
    side), since the expansion is poor there; else the Cornish-Fisher expansion around the normal.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df < 3 or (df <= len(T_975) and float(df).is_integer()):
        return T_975[int(df) - 1]
    z = 1.959963984540054
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df ** (k + 1) for k, term in enumerate(terms))


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t interval (nan half-width for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def welch_ci(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a) − mean(b) and the half-width of its 95 % Welch interval (unequal variances and sizes)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return statistics.fmean(a) - statistics.fmean(b), t_quantile_975(df) * math.sqrt(va + vb)


def bootstrap_median_ci(values: list[float], seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    """The 2.5 % and 97.5 % points of the median over ``draws`` resamples of ``values`` (with
    replacement, seeded: the same values give the same interval)."""
    rng = random.Random(seed)
    boot = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return boot[round(0.025 * draws) - 1], boot[round(0.975 * draws)]
