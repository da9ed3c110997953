"""The paper's Fig. 3 from a reproduce.py grid's logs: |balancedness| over training, per method and per layer.

    python scripts/plot_balancedness.py --out docs/results/offline [--task sst2-32shot] [--png PATH]
    python scripts/reproduce.py --plot --out docs/results/offline          # the same, default task

Reads ``OUT/logs/<task>/<method>/seed<S>/fit/metrics.csv`` (``bar/abs_balancedness`` and, when the
grid logged per pair, ``bar/abs_balancedness/<pair>``). Left panel: mean |balancedness| over the
pairs against the optimizer step, one line per method (mean over seeds, band = min–max over seeds).
Right panel: per LoRA pair (layer × query/value), the change of |B| from the first to the last
logging step in percent, mean over seeds: which layers each method lets drift. Writes a PNG (default
``docs/figures/fig3_balancedness_<task>.png``) and prints what it drew.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
from pathlib import Path

from lit_bar.experiments.environment import ROOT, pyplot
from lit_bar.experiments.reproduce.grids import METHOD_NAMES

__all__ = ["load_runs", "main", "plot", "plot_from_logs", "read_series"]

METHOD_ORDER = ("lora", "sam", "nbar", "obar", "fsam", "psam")
KEY = "bar/abs_balancedness"


def read_series(path: Path) -> dict[str, dict[int, float]]:
    """Column → {step: value} for every ``bar/abs_balancedness*`` column of a ``metrics.csv``."""
    series: dict[str, dict[int, float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key.startswith(KEY) and value:
                    series.setdefault(key, {})[int(float(row["step"]))] = float(value)
    return series


def load_runs(out: Path, task: str) -> dict[str, list[dict[str, dict[int, float]]]]:
    """Method → one series dict per seed, from the grid's fit logs of ``task``."""
    runs: dict[str, list] = {}
    for path in sorted((out / "logs" / task).glob("*/seed*/fit/metrics.csv")):
        series = read_series(path)
        if KEY in series:
            runs.setdefault(path.parents[2].name, []).append(series)
    if not runs:
        raise SystemExit(
            f"plot_balancedness.py: error: no {KEY} in {out / 'logs' / task}/*/seed*/fit/metrics.csv; "
            "run scripts/reproduce.py first (or pass --out/--task)"
        )
    return dict(
        sorted(runs.items(), key=lambda kv: METHOD_ORDER.index(kv[0]) if kv[0] in METHOD_ORDER else 99)
    )


def _pair_label(key: str) -> str:
    """``bar/abs_balancedness/...layer.3.attention.self.value.default`` → ``L3 v``."""
    match = re.search(r"layer\.(\d+)\..*?(query|value|key)", key)
    return f"L{match.group(1)} {match.group(2)[0]}" if match else key.rsplit("/", 1)[-1][-24:]


def plot(runs: dict, task: str, png: Path) -> None:
    """Draw the two panels into ``png``."""
    plt = pyplot("plot_balancedness.py: error: Fig. 3")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    pair_keys = sorted({k for seeds in runs.values() for s in seeds for k in s if k != KEY}, key=_layer_order)
    width = 0.8 / max(len(runs), 1)
    for i, (method, seeds) in enumerate(runs.items()):
        steps = sorted(set.intersection(*(set(s[KEY]) for s in seeds)))
        values = [[s[KEY][t] for s in seeds] for t in steps]
        x = [t + 1 for t in steps]  # logged before optimizer step t+1
        label = f"{METHOD_NAMES.get(method, method)} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
        (line,) = left.plot(x, [statistics.fmean(v) for v in values], marker=".", label=label)
        left.fill_between(
            x, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.2
        )
        ratios = [statistics.fmean(_ratio(s.get(k, {})) for s in seeds if s.get(k)) for k in pair_keys]
        positions = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(pair_keys))]
        right.bar(positions, ratios, width, label=METHOD_NAMES.get(method, method), color=line.get_color())
    left.set(xlabel="optimizer step", ylabel="mean |balancedness| over LoRA pairs", title=f"{task}: |B_t|")
    left.legend()
    right.axhline(0.0, color="grey", lw=0.8)
    right.set_xticks(range(len(pair_keys)), [_pair_label(k) for k in pair_keys], rotation=60, fontsize=7)
    right.set(
        ylabel="change of |B| from first to last logged step, %", title=f"{task}: per LoRA pair (layer, q/v)"
    )
    right.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)


def _ratio(series: dict[int, float]) -> float:
    first, last = series[min(series)], series[max(series)]
    return 100.0 * (last / first - 1.0) if first else float("nan")


def _layer_order(key: str) -> tuple[int, str]:
    match = re.search(r"layer\.(\d+)\.", key)
    return (int(match.group(1)) if match else -1, key)


def plot_from_logs(out: Path, task: str = "sst2-32shot", png: Path | None = None) -> Path:
    """Read the grid's logs under ``out`` and write the figure; returns its path."""
    runs = load_runs(out, task)
    png = png or ROOT / "docs" / "figures" / f"fig3_balancedness_{task}.png"
    plot(runs, task, png)
    for method, seeds in runs.items():
        finals = [s[KEY][max(s[KEY])] for s in seeds]
        firsts = [s[KEY][min(s[KEY])] for s in seeds]
        first, final = statistics.fmean(firsts), statistics.fmean(finals)
        print(
            f"{method:5s} {len(seeds)} seeds: mean |B| {first:.4f} at the first logged step, {final:.4f} last"
        )
    return png


def main(argv: list[str] | None = None) -> None:
    """``scripts/plot_balancedness.py``: Fig. 3 of one task of a grid's ``--out`` folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs/results/offline", help="reproduce.py's --out"
    )
    parser.add_argument("--task", default="sst2-32shot", help="which task's runs (a folder of OUT/logs)")
    parser.add_argument("--png", type=Path, default=None, help="figure path (default docs/figures/fig3_...)")
    args = parser.parse_args(argv)
    print(f"wrote {plot_from_logs(args.out, args.task, args.png)}")
