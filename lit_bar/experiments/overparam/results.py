"""The study's ``results.csv`` and what it says: per size the paired gap (method − base, same seed)
with its 95 % t-interval, the trend (gap at the largest size − gap at the smallest, Welch 95 %
interval), and ``overparam.png``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from lit_bar.experiments.environment import pyplot
from lit_bar.experiments.stats import mean_ci, welch_ci

__all__ = ["FIELDS", "finish", "paired_gaps", "plot", "read_csv", "summary", "write_csv"]

FIELDS = [
    "part",
    "size",
    "params",
    "n_train",
    "overparam",
    "method",
    "seed",
    "train_acc",
    "test_acc",
    "seconds",
]


def paired_gaps(rows: list[dict[str, Any]], part: str, method: str) -> dict[int, dict[int, float]]:
    """size → {seed: test accuracy of ``method`` − that of base}, for seeds where both ran."""
    acc = {
        (int(r["size"]), int(r["seed"]), r["method"]): float(r["test_acc"]) for r in rows if r["part"] == part
    }
    out: dict[int, dict[int, float]] = {}
    for (size, seed, name), value in acc.items():
        if name == method and (size, seed, "base") in acc:
            out.setdefault(size, {})[seed] = value - acc[(size, seed, "base")]
    return dict(sorted(out.items()))


def summary(rows: list[dict[str, Any]], part: str, method: str) -> list[str]:
    """Lines: per size the mean gap (points) with its 95 % CI; then the trend (largest − smallest size)."""
    gaps = paired_gaps(rows, part, method)
    lines = [f"{part}: {method} − base, test accuracy points, 95 % t-interval over paired seeds"]
    for size, by_seed in gaps.items():
        mean, half = mean_ci([100 * g for g in by_seed.values()])
        lines.append(
            f"  size {size:>5}: n={len(by_seed):>2}  {mean:+.2f} ± {half:.2f}  (CI width {2 * half:.2f})"
        )
    if len(gaps) > 1 and min(len(g) for g in (gaps[min(gaps)], gaps[max(gaps)])) > 1:
        mean, half = welch_ci(
            [100 * g for g in gaps[max(gaps)].values()], [100 * g for g in gaps[min(gaps)].values()]
        )
        lines.append(f"  trend (gap at size {max(gaps)} − gap at size {min(gaps)}): {mean:+.2f} ± {half:.2f}")
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean paired gap per size with its 95 % confidence interval (no bar where one seed ran)."""
    plt = pyplot("overparam_study.py: error: the figure")
    titles = {
        "lora_rank": "(a) LoRA rank, MiniLM on SST-2",
        "mlp_width": "(b) MLP width, synthetic, 20% label noise",
    }
    parts = [p for p in titles if any(r["part"] == p for r in rows)]
    ratio = {(r["part"], int(r["size"])): float(r["overparam"]) for r in rows}
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        seeds = []
        for shift, (method, color) in zip((0.97, 1.03), (("SAM", "C0"), ("nBAR", "C1")), strict=True):
            gaps = paired_gaps(rows, part, method)
            if not gaps:
                continue
            stats = [mean_ci([100 * g for g in by_seed.values()]) for by_seed in gaps.values()]
            seeds.append(
                f"{method} n={min(len(g) for g in gaps.values())}–{max(len(g) for g in gaps.values())}"
            )
            ax.errorbar(
                [shift * ratio[(part, size)] for size in gaps],
                [m for m, _ in stats],
                yerr=[0.0 if math.isnan(h) else h for _, h in stats],
                marker="o",
                capsize=3,
                color=color,
                label=f"{method} − base",
            )
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters / training examples")
        ax.set_ylabel("test accuracy gap (points), 95 % CI")
        ax.set_title(f"{titles[part]}\nseeds: {', '.join(seeds)}", fontsize=10)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.csv, with ``size`` and ``seed`` as ints (the resume key)."""
    rows = list(csv.DictReader(path.open()))
    missing = [
        f for f in ("part", "size", "method", "seed", "test_acc", "overparam") if rows and f not in rows[0]
    ]
    if missing:
        raise SystemExit(f"{path} is not a results.csv of this script: columns {missing} are missing")
    for row in rows:
        row["size"], row["seed"] = int(row["size"]), int(row["seed"])
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` to ``path`` through a temporary file (an interrupted write leaves the old file)."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)  # atomic: an interrupted run never leaves a torn file


def finish(rows: list[dict[str, Any]], out: Path) -> None:
    """Write ``results.csv`` and ``overparam.png`` into ``out``; print the intervals and trends."""
    write_csv(rows, out / "results.csv")
    plot(rows, out / "overparam.png")
    for part in dict.fromkeys(r["part"] for r in rows):
        for method in ("SAM", "nBAR"):
            if paired_gaps(rows, part, method):
                print("\n".join(summary(rows, part, method)))
    print(f"wrote {out / 'results.csv'} and {out / 'overparam.png'}")
