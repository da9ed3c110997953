"""``OUT/tables.md`` from ``OUT/runs.jsonl``: the paper's table layout (rows = methods, columns = tasks).

Each cell is the mean ± sample standard deviation (ddof = 1) over seeds of the task's metric, ×100,
with ``(n = k)`` when fewer seeds than the grid's have finished; the last column is the average over
tasks of those means (the paper's "Avg"), given only when every task has a value. A partial grid is
shown over its complete seeds only, and says so.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

__all__ = ["complete_seeds", "format_cell", "last_values", "read_rows", "tables_markdown", "write_tables"]


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


def format_cell(values: list[float], expected: int, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` (×scale) of the seeds' values; ``(n = k)`` when some seeds are missing."""
    if not values:
        return "—"
    mean = statistics.fmean(values) * scale
    text = f"{mean:.{digits}f}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values) * scale:.{digits}f}"
    return text + (f" (n = {len(values)})" if len(values) < expected else "")


def _metric(task, rows: list[dict]) -> str | None:
    if task.metric:
        return task.metric
    names = sorted({k for r in rows for k in r.get("metrics", {}) if "loss" not in k})
    return names[0] if names else None


def _table(grid, ok: list[dict], value, scale: float, average: bool, digits: int = 1) -> list[str]:
    """One Markdown table: ``value(row)`` per run, aggregated per (method, task)."""
    lines = ["| method | " + " | ".join(t.name for t in grid.tasks) + (" | avg |" if average else " |")]
    lines.append("|---" * (len(grid.tasks) + 1 + average) + "|")
    from reproduce_grids import METHOD_NAMES

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


def complete_seeds(grid, ok: list[dict]) -> list[int]:
    """Seeds for which every (task, method) cell of the grid has an ``ok`` row."""
    have = {(r["task"], r["method"], r["seed"]) for r in ok}
    return [s for s in grid.seeds if all((t.name, m, s) in have for t in grid.tasks for m in grid.methods)]


def _paired(task, row: dict, ok: list[dict], base: str) -> float | None:
    """``row``'s metric minus the same task and seed's ``base``-method metric (None if that is missing)."""
    name = _metric(task, ok)
    match = [r for r in ok if (r["task"], r["method"], r["seed"]) == (row["task"], base, row["seed"])]
    if not match or name not in row["metrics"] or name not in match[0]["metrics"]:
        return None
    return row["metrics"][name] - match[0]["metrics"][name]


def tables_markdown(grid, rows: list[dict]) -> list[str]:
    """The section of one grid: metric table, final |balancedness|, wall time and peak memory.

    A partial grid is tabulated over its complete seeds only (every method then has the same seeds,
    so rows compare); the runs of unfinished seeds are counted, and stay in ``runs.jsonl``.
    """
    ok = [r for r in rows if r.get("grid") == grid.name and r.get("status") == "ok"]
    if not ok:
        return []
    expected, seeds = len(grid.cells()), complete_seeds(grid, ok)
    done = len({(r["task"], r["method"], r["seed"]) for r in ok})
    lines = [f"## {grid.title}", ""]
    if done < expected:
        shown = [r for r in ok if r["seed"] in seeds]
        lines += [
            f"PARTIAL: {done} of {expected} runs finished. The tables use the seeds with every run finished, "
            f"{seeds or 'none yet'}; {len(ok) - len(shown)} runs of unfinished seeds are in runs.jsonl only.",
            "",
        ]
        ok = shown or ok
    commits = sorted({r.get("commit", "?")[:12] for r in ok})
    metric_names = ", ".join(f"{t.name}: `{_metric(t, ok)}`" for t in grid.tasks)
    metric = lambda task, r, ok: r["metrics"].get(_metric(task, ok))  # noqa: E731
    lines += [f"Runs shown: {len(ok)}; grid seeds {list(grid.seeds)}; commit {', '.join(commits)}.", ""]
    lines += [f"Test metric ×100, mean ± std over seeds ({metric_names}):", ""]
    lines += _table(grid, ok, metric, 100.0, average=True)
    from reproduce_grids import METHOD_NAMES

    base = grid.methods[0]
    name = METHOD_NAMES.get(base, base)
    lines += ["", f"Difference to {name}, paired by seed (same data sample and initialisation), ×100:", ""]
    lines += _table(grid, ok, lambda task, r, ok: _paired(task, r, ok, base), 100.0, average=True, digits=2)
    lines += ["", "Final mean |balancedness| (`bar/abs_balancedness` at the last logging step):", ""]
    lines += _table(grid, ok, lambda task, r, ok: r.get("abs_balancedness"), 1.0, average=False, digits=3)
    lines += ["", "Wall time per run, s (fit then test, in one child process per run):", ""]
    lines += _table(grid, ok, lambda task, r, ok: r.get("wall_s"), 1.0, average=False, digits=0)
    peak = max(r.get("peak_rss_mb", 0) for r in ok)
    lines += ["", f"Peak memory (largest `ru_maxrss` of a run): {peak:.0f} MB.", ""]
    return lines


def write_tables(out: Path, grids: dict) -> Path:
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
