"""The tuned grid's figure: each run's test metric against its final worst-case sharpness, coloured
by method, one panel per task (issue "Does BAR do what the paper says?").

    python scripts/reproduce.py --plot-sharpness --out docs/results/offline-tuned

One point per final run (one legend below the panels; a panel's title counts its runs per method,
in the legend's order): each ``ok`` row of ``OUT/runs.jsonl`` at the hyperparameters selected on dev
that has both figures, ``sharpness/worst`` (from ``SharpnessMonitor`` in ``lit-bar test``) and the
task's test metric. The search's other candidates are tested too (so that the chosen one is the final
run of the search's seed), but their test metrics are not shown, here as in the tables: the protocol
reads the test split for the final runs only. Nothing here reads the figure's numbers back: the tables
(``tables.md``) carry the statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_bar.experiments.environment import pyplot
from lit_bar.experiments.reproduce.cells import SHARPNESS_MONITOR
from lit_bar.experiments.reproduce.grids import METHOD_NAMES, Grid, chosen_hparams
from lit_bar.experiments.reproduce.tables import read_rows
from lit_bar.sharpness import DEFAULT_RHO

__all__ = ["FIGURE", "plot_sharpness", "sharpness_points"]

FIGURE = "sharpness_vs_test.png"
WORST = "sharpness/worst"


def worst_label() -> str:
    """The x axis: the grids' worst-case measurement, read from their ``SharpnessMonitor`` settings."""
    settings = SHARPNESS_MONITOR["init_args"]
    rho, steps = settings.get("rho", DEFAULT_RHO), settings.get("ascent_steps", 1)
    return f"worst-case sharpness (ρ = {rho}, {steps} ascent step{'s' * (steps > 1)})"


def sharpness_points(
    grid: Grid, rows: Sequence[dict[str, Any]], chosen: set[tuple[str, str, tuple]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """``{task: [{method, worst, value, metric}, ...]}`` from ``grid``'s ok rows.

    ``chosen``: the (task, method, hparams) selected on dev; rows at other hyperparameters are left
    out. ``None`` keeps every row (a grid without a search).
    """
    metrics = {t.name: t.metric or "test/accuracy" for t in grid.tasks}
    points: dict[str, list[dict[str, Any]]] = {t.name: [] for t in grid.tasks}
    for row in rows:
        if row.get("grid") != grid.name or row.get("status") != "ok" or row.get("task") not in metrics:
            continue
        values, metric = row.get("metrics", {}), metrics[row["task"]]
        hparams = tuple(tuple(h) for h in row.get("hparams", ()))
        if WORST not in values or metric not in values:
            continue
        if chosen is not None and (row["task"], row["method"], hparams) not in chosen:
            continue
        points[row["task"]].append(
            {"method": row["method"], "worst": values[WORST], "value": values[metric], "metric": metric}
        )
    return points


def plot_sharpness(out: Path, grid: Grid, png: Path | None = None) -> Path:
    """Draw ``OUT/sharpness_vs_test.png`` (or ``png``) from ``OUT/runs.jsonl``; returns the path.

    Raises:
        SystemExit: No run of ``grid`` has both figures yet (nothing to draw).
    """
    rows = read_rows(out / "runs.jsonl")
    chosen = None
    if grid.search is not None:  # the selected candidates' rows: the final runs
        chosen = {(t, m, tuple(tuple(h) for h in hp)) for (t, m), hp in chosen_hparams(grid, rows).items()}
    points = sharpness_points(grid, rows, chosen)
    tasks = [t for t, p in points.items() if p]
    if not tasks:
        raise SystemExit(
            f"reproduce.py: error: no run of grid {grid.name} in {out / 'runs.jsonl'} has both "
            f"{WORST} and its test metric yet"
        )
    plt = pyplot("reproduce.py: error: the sharpness figure")
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 4.4), squeeze=False)
    drawn = {p["method"] for t in tasks for p in points[t]}
    methods = [m for m in grid.methods if m in drawn]
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, task in zip(axes[0], tasks, strict=True):
        counts = []
        for method in methods:
            mine = [p for p in points[task] if p["method"] == method]
            counts.append(len(mine))
            ax.scatter([p["worst"] for p in mine], [p["value"] for p in mine], color=colours[method], s=36)
        ax.set(xlabel=worst_label(), ylabel=points[task][0]["metric"])
        per_method = str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))
        ax.set_title(f"{task} (runs per method: {per_method})")
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))  # short labels, no offset text on the label
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:.3g}"))
    # One legend for all panels, below them: inside a panel it can hide a point.
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[m]) for m in methods]
    fig.legend(handles, [METHOD_NAMES.get(m, m) for m in methods], loc="lower center", ncol=len(methods))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    target = png or out / FIGURE
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target
