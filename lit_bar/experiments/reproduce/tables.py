"""``OUT/tables.md`` from ``OUT/runs.jsonl``: the paper's table layout (rows = methods, columns = tasks).

Each cell is the mean ± sample standard deviation (ddof = 1) over seeds of the task's metric, ×100,
with ``(n = k)`` when fewer seeds than the grid's have finished; the last column is the average over
tasks of those means (the paper's "Avg"), given only when every task has a value. A partial grid is
shown over its complete seeds only, and says so.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from lit_bar.experiments.environment import ROOT
from lit_bar.experiments.reproduce.grids import (
    METHOD_NAMES,
    Grid,
    Task,
    chosen_hparams,
    dev_metric,
    final_cells,
    row_key,
    search_cells,
)
from lit_bar.experiments.stats import mean_ci

__all__ = [
    "bar_strength",
    "complete_seeds",
    "format_cell",
    "last_values",
    "read_rows",
    "tables_markdown",
    "write_tables",
]


def read_rows(path: Path) -> list[dict]:
    """Every complete JSON row of ``runs.jsonl`` (a torn last line from a kill is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def last_values(path: Path) -> dict[str, float]:
    """The last non-empty value of each column of a Lightning ``metrics.csv``."""
    values: dict[str, float] = {}
    if not path.is_file():
        return values
    with path.open() as f:
        for row in csv.DictReader(f):
            values.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return values


def format_cell(values: list[float], expected: int, scale: float = 100.0, digits: int | str = 1) -> str:
    """``mean ± std`` (×scale) of the seeds' values; ``(n = k)`` when some seeds are missing.

    ``digits``: decimals, or a format spec such as ``".3g"`` (figures that span orders of magnitude).
    """
    if not values:
        return "—"
    spec = digits if isinstance(digits, str) else f".{digits}f"
    mean = statistics.fmean(values) * scale
    text = f"{mean:{spec}}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values) * scale:{spec}}"
    return text + (f" (n = {len(values)})" if len(values) < expected else "")


def _metric(task: Task, rows: list[dict]) -> str | None:
    if task.metric:
        return task.metric
    names = sorted({k for r in rows for k in r.get("metrics", {}) if "loss" not in k})
    return names[0] if names else None


def _table(
    grid: Grid, ok: list[dict], value, scale: float, average: bool, digits: int | str = 1
) -> list[str]:
    """One Markdown table: ``value(row)`` per run, aggregated per (method, task)."""
    lines = ["| method | " + " | ".join(t.name for t in grid.tasks) + (" | avg |" if average else " |")]
    lines.append("|---" * (len(grid.tasks) + 1 + average) + "|")
    for method in grid.methods:
        cells, means = [], []
        for task in grid.tasks:
            runs = [r for r in ok if r["method"] == method and r["task"] == task.name]
            values = [v for v in (value(task, r, ok) for r in runs) if v is not None]
            cells.append(format_cell(values, len(grid.seeds), scale, digits))
            means.append(statistics.fmean(values) * scale if values else None)
        if average:
            cells.append(f"{statistics.fmean(means):.{digits}f}" if None not in means else "—")
        lines.append(f"| {METHOD_NAMES.get(method, method)} | " + " | ".join(cells) + " |")
    return lines


def complete_seeds(grid: Grid, ok: list[dict]) -> dict[str, list[int]]:
    """Per task, the seeds that every method with a run on that task has finished (an ``ok`` row).

    Per task, so that a grid run one task at a time shows each finished task whole; over the methods
    run there, so that every row of a task's column compares the same seeds (paired)."""
    have = {(r["task"], r["method"], r["seed"]) for r in ok}
    seeds = {}
    for t in grid.tasks:
        methods = [m for m in grid.methods if any((t.name, m, s) in have for s in grid.seeds)]
        seeds[t.name] = [s for s in grid.seeds if methods and all((t.name, m, s) in have for m in methods)]
    return seeds


def _paired(task: Task, row: dict, ok: list[dict], base: str) -> float | None:
    """``row``'s metric minus the same task and seed's ``base``-method metric (None if that is missing)."""
    name = _metric(task, ok)
    match = [r for r in ok if (r["task"], r["method"], r["seed"]) == (row["task"], base, row["seed"])]
    if not match or name not in row["metrics"] or name not in match[0]["metrics"]:
        return None
    return row["metrics"][name] - match[0]["metrics"][name]


def format_ci(values: list[float], scale: float = 100.0, digits: int | str = 2) -> str:
    """``mean [low, high]`` (×scale) with the 95 % t interval; ``*`` when the interval excludes 0.

    ``digits``: decimals, or a format spec such as ``".3g"``.
    """
    if not values:
        return "—"
    spec = "+" + (digits if isinstance(digits, str) else f".{digits}f")
    mean, half = mean_ci(values)
    if math.isnan(half):
        return f"{mean * scale:{spec}} (n = 1)"
    low, high = (mean - half) * scale, (mean + half) * scale
    star = "*" if low > 0 or high < 0 else ""
    return f"{mean * scale:{spec}} [{low:{spec}}, {high:{spec}}]{star}"


def bar_strength(lr: float, mu: float, schedule: str, total_steps: int, warmup_ratio: float = 0.06) -> float:
    """BAR's total shrink Σ_t η_t μ_t over a run: η_t from lit_bar's WarmupLinearDecay (the task files'
    schedule) and μ_t from :func:`lit_bar.algorithms.bar.mu_at`, summed over the optimizer steps as they
    run."""
    import torch

    from lit_bar.algorithms.bar import mu_at
    from lit_bar.lightning.schedules import WarmupLinearDecay

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    schedule_lr = WarmupLinearDecay(optimizer, warmup_ratio=warmup_ratio, total_steps=total_steps)
    total = 0.0
    for step in range(total_steps):
        total += optimizer.param_groups[0]["lr"] * mu_at(mu, step, total_steps, schedule)
        optimizer.step()
        schedule_lr.step()
    return total


def _search_section(grid: Grid, rows: list[dict]) -> tuple[list[str], list[dict]]:
    """The search's table (every candidate's dev metric, the chosen one in bold) and the final rows."""
    ok = [r for r in rows if r.get("grid") == grid.name and r.get("status") == "ok"]
    chosen = chosen_hparams(grid, rows)
    dev = {row_key(r): r.get("dev_metrics", {}) for r in ok}
    lines = [
        f"### Selection on dev (seed {grid.search.seed})",
        "",
        "Chosen by the dev metric alone. Each candidate run is also tested, so that the chosen one serves as "
        f"the final run of seed {grid.search.seed}; the other candidates' test metrics stay in `runs.jsonl`, "
        "unused and not shown here.",
        "",
        "| task | method | candidate | dev metric ×100 |",
        "|---|---|---|---|",
    ]
    cells = {c.key: c for c in [*search_cells(grid, {}), *search_cells(grid, chosen)]}  # each once
    for cell in sorted(
        cells.values(), key=lambda c: ([t.name for t in grid.tasks].index(c.task), c.method != "lora")
    ):
        value = dev.get(cell.key, {}).get(dev_metric(next(t for t in grid.tasks if t.name == cell.task)))
        text = "—" if value is None else f"{value * 100:.1f}"
        if chosen.get((cell.task, cell.method)) == cell.hparams:
            text = f"**{text}** (chosen)"
        lines.append(f"| {cell.task} | {cell.method} | {cell.tag} | {text} |")
    steps = {t.name: _max_steps(t.config) for t in grid.tasks}
    intro = "BAR's total strength Σ_t η_t μ_t at the chosen hyperparameters (paper's protocol: ≈ 0.1–0.5):"
    lines += ["", intro, "", "| task | steps | method | chosen | Σ η_t μ_t |", "|---|---|---|---|---|"]
    for (task, method), hparams in sorted(chosen.items()):
        values = dict(hparams)
        if "mu" in values and steps.get(task):
            total = bar_strength(
                float(values["lr"]), float(values["mu"]), str(values["schedule"]), steps[task]
            )
            tag = ",".join(f"{k}={v}" for k, v in hparams)
            lines.append(f"| {task} | {steps[task]} | {method} | {tag} | {total:.3f} |")
    finals = {c.key for c in final_cells(grid, chosen)}
    return [*lines, ""], [r for r in ok if row_key(r) in finals]


def _max_steps(config: str) -> int | None:
    """``trainer.max_steps`` of a task file (None when it cannot be read)."""
    from jsonargparse import get_loader  # the YAML reader of lit-bar's own command line

    try:
        text = (ROOT / config).read_text()
        return int(get_loader("yaml")(text)["trainer"]["max_steps"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


SHARPNESS = (
    ("sharpness/worst", "worst-case sharpness max_{‖ε‖≤ρ} L(w+ε) − L(w)"),
    ("sharpness/average", "average sharpness E L(w+ε) − L(w) over random directions of norm ρ"),
    ("sharpness/hessian_top", "top Hessian eigenvalue"),
)


def tables_markdown(grid: Grid, rows: list[dict]) -> list[str]:
    """The section of one grid: metric table, final |balancedness|, wall and CPU time, peak memory.

    A partial grid is tabulated over its complete seeds only (every method then has the same seeds,
    so rows compare); the runs of unfinished seeds are counted, and stay in ``runs.jsonl``. A grid with
    a search shows the selection first, then its final runs only.
    """
    search_lines: list[str] = []
    if getattr(grid, "search", None) is not None:
        if not any(r.get("grid") == grid.name and r.get("status") == "ok" for r in rows):
            return []
        search_lines, ok = _search_section(grid, rows)
    else:
        ok = [r for r in rows if r.get("grid") == grid.name and r.get("status") == "ok"]
    if not ok:
        return (
            [f"## {grid.title}", "", *search_lines, "No final run has finished yet.", ""]
            if search_lines
            else []
        )
    expected, seeds = len(grid.cells()), complete_seeds(grid, ok)
    done = len({(r["task"], r["method"], r["seed"]) for r in ok})
    lines = [f"## {grid.title}", "", *search_lines]
    if done < expected:
        shown = [r for r in ok if r["seed"] in seeds.get(r["task"], ())]
        per_task = ", ".join(f"{task} {values or 'none yet'}" for task, values in seeds.items())
        left = len(ok) - len(shown)
        lines += [
            f"PARTIAL: {done} of {expected} runs finished. Per task, the tables use the seeds that every "
            f"method run on it has finished ({per_task}); {left} run{'s' * (left != 1)} of unfinished seeds "
            f"{'is' if left == 1 else 'are'} in runs.jsonl only.",
            "",
        ]
        ok = shown or ok
    commits = sorted({r.get("commit", "?")[:12] for r in ok})
    metric_names = ", ".join(f"{t.name}: `{_metric(t, ok)}`" for t in grid.tasks)
    metric = lambda task, r, ok: r["metrics"].get(_metric(task, ok))  # noqa: E731
    lines += [f"Runs shown: {len(ok)}; grid seeds {list(grid.seeds)}; commit {', '.join(commits)}.", ""]
    lines += [f"Test metric ×100, mean ± std over seeds ({metric_names}):", ""]
    lines += _table(grid, ok, metric, 100.0, average=True)
    base = grid.methods[0]
    name = METHOD_NAMES.get(base, base)
    lines += ["", f"Difference to {name}, paired by seed (same data sample and initialisation), ×100:", ""]
    lines += _table(grid, ok, lambda task, r, ok: _paired(task, r, ok, base), 100.0, average=True, digits=2)
    if getattr(grid, "search", None) is not None:
        lines += ["", f"Difference to {name}, paired by seed, ×100: mean [95 % t interval]; * = the interval "
                  "excludes 0:", ""]  # fmt: skip
        lines += _ci_table(grid, ok, lambda task, r: _paired(task, r, ok, base), 100.0)
    if any(key in r.get("metrics", {}) for r in ok for key, _ in SHARPNESS):
        for key, what in SHARPNESS:
            lines += ["", f"`{key}`: {what}, of the final weights (mean ± std over seeds):", ""]
            lines += _table(grid, ok, lambda task, r, ok, key=key: r["metrics"].get(key), 1.0, False, ".3g")
        for key, _ in SHARPNESS:
            lines += ["", f"`{key}`, paired difference to {name}: mean [95 % t interval]:", ""]
            lines += _ci_table(grid, ok, lambda task, r, key=key: _paired_key(r, ok, base, key), 1.0, ".3g")
    lines += ["", "Final mean |balancedness| (`bar/abs_balancedness` at the last logging step):", ""]
    lines += _table(grid, ok, lambda task, r, ok: r.get("abs_balancedness"), 1.0, average=False, digits=3)
    lines += ["", "Wall time per run, s (fit then test, in one child process per run):", ""]
    lines += _table(grid, ok, lambda task, r, ok: r.get("wall_s"), 1.0, average=False, digits=0)
    if any("cpu_s" in r for r in ok):  # what a method costs: wall time also counts waits on a busy machine
        what = "user + system of the run's process tree; rows that record it"
        lines += ["", f"CPU time per run, s (`cpu_s`: {what}):", ""]
        lines += _table(grid, ok, lambda task, r, ok: r.get("cpu_s"), 1.0, average=False, digits=0)
    peak = max(r.get("peak_rss_mb", 0) for r in ok)
    lines += ["", f"Peak memory (largest `ru_maxrss` of a run): {peak:.0f} MB.", ""]
    lines += _cost_line(grid, rows)
    return lines


def _cost_line(grid: Grid, rows: list[dict]) -> list[str]:
    """What every run of the grid so far cost (search and final runs, failed ones included): CPU time
    where the row records it, else its wall time (which also counts waits on a busy machine)."""
    mine = [r for r in rows if r.get("grid") == grid.name]
    if not mine:
        return []
    timed = [r["cpu_s"] for r in mine if "cpu_s" in r]
    wall = sum(r.get("wall_s", 0) for r in mine if "cpu_s" not in r)
    parts = [f"{sum(timed) / 3600:.2f} CPU-hours over the {len(timed)} that record `cpu_s`"] if timed else []
    if len(timed) < len(mine):
        parts.append(f"{wall / 3600:.2f} wall-hours of one core over the {len(mine) - len(timed)} without it")
    text = f"Cost so far: {len(mine)} runs, " + ", ".join(parts)
    return [text + ".", ""]


def _paired_key(row: dict, ok: list[dict], base: str, key: str) -> float | None:
    """``row``'s ``metrics[key]`` minus the same task and seed's ``base``-method value."""
    match = [r for r in ok if (r["task"], r["method"], r["seed"]) == (row["task"], base, row["seed"])]
    if not match or key not in row["metrics"] or key not in match[0]["metrics"]:
        return None
    return row["metrics"][key] - match[0]["metrics"][key]


def _ci_table(grid: Grid, ok: list[dict], value, scale: float, digits: int | str = 2) -> list[str]:
    """Rows = methods but the base, columns = tasks: ``mean [95 % interval]`` of ``value(task, row)``."""
    lines = [
        "| method | " + " | ".join(t.name for t in grid.tasks) + " |",
        "|---" * (len(grid.tasks) + 1) + "|",
    ]
    for method in grid.methods[1:]:
        cells = []
        for task in grid.tasks:
            runs = [r for r in ok if r["method"] == method and r["task"] == task.name]
            cells.append(
                format_ci([v for v in (value(task, r) for r in runs) if v is not None], scale, digits)
            )
        lines.append(f"| {METHOD_NAMES.get(method, method)} | " + " | ".join(cells) + " |")
    return lines


def write_tables(out: Path, grids: dict[str, Grid]) -> Path:
    """Rebuild ``out/tables.md`` from ``out/runs.jsonl`` (every grid that has finished runs)."""
    rows = read_rows(out / "runs.jsonl")
    lines = [
        "# Results of scripts/reproduce.py",
        "",
        "Written from `runs.jsonl` by `scripts/reproduce.py`.",
        "",
    ]
    for grid in grids.values():
        lines += tables_markdown(grid, rows)
    path = out / "tables.md"
    path.write_text("\n".join(lines) + "\n")
    return path
