"""scripts/reproduce.py's selection on dev (a grid with a Search), with fake cells: what is run, what is
chosen, resume, the final runs and their tables (95 % intervals, sharpness, BAR's total strength)."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest

from lit_bar.experiments.reproduce import runner as reproduce
from lit_bar.experiments.reproduce.grids import GRIDS, Grid, Search, Task, chosen_hparams
from lit_bar.experiments.reproduce.tables import bar_strength, read_rows
from lit_bar.experiments.stats import mean_ci, t_quantile_975

# A fake cell. Its dev metric peaks at lr=0.002, rho=0.1, mu=1.0 with cosine; its test metric peaks
# elsewhere (lr=0.001, rho=0.01), so a search that read the test split would choose differently.
FAKE = """
import json, os, sys
from pathlib import Path
spec = Path(sys.argv[1]); cell = json.loads(spec.read_text())["cell"]
hp = dict(cell["hparams"])
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps([cell["task"], cell["method"], cell["seed"], cell["hparams"]]) + "\\n")
dev = 0.5 - abs(hp["lr"] - 0.002) - abs(hp.get("rho", 0.1) - 0.1) - abs(hp.get("mu", 1.0) - 1.0)
dev += 0.01 * (hp.get("schedule", "cosine") == "cosine")
test = 0.6 - abs(hp["lr"] - 0.001) - abs(hp.get("rho", 0.01) - 0.01) + 0.001 * cell["seed"]
test += 0.02 * (cell["method"] == "nbar") + 0.003 * (cell["seed"] % 2)
worst = 1.0 - 0.1 * (cell["method"] == "sam") + 0.01 * cell["seed"]
metrics = {"test/accuracy": test, "sharpness/worst": worst}
result = {"metrics": metrics, "dev_metrics": {"val/accuracy": dev}, "abs_balancedness": 1.0, "commands": []}
(spec.parent / "result.json").write_text(json.dumps(result))
"""

SEARCH = Search(
    lrs=(0.001, 0.002, 0.004),
    spaces=(
        ("sam", ((("rho", 0.01),), (("rho", 0.1),))),
        ("nbar", tuple((("mu", mu), ("schedule", h)) for h in ("linear", "cosine") for mu in (0.5, 1.0))),
    ),
    seed=1,
)
GRID = Grid(
    "fake-search",
    "Fake search grid",
    (Task("a", "a.yaml", metric="test/accuracy"),),
    ("lora", "sam", "nbar"),
    (1, 2, 3),
    search=SEARCH,
)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[reproduce.Settings, Path]:
    """The fake grid, searched and run once for the module (each fake cell is a child process)."""
    tmp_path = tmp_path_factory.mktemp("search")
    script = tmp_path / "fake_cell.py"
    script.write_text(FAKE)
    calls = tmp_path / "calls.txt"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CALLS", str(calls))
        patch.setattr(reproduce, "child_command", lambda spec: [sys.executable, str(script), str(spec)])
        patch.setitem(reproduce.GRIDS, "fake-search", GRID)
        settings = reproduce.Settings(tmp_path / "out", None, None, False, validate=True)
        settings.out.mkdir()
        assert reproduce.run_grid(GRID, settings, jobs=2) == 0
        assert reproduce.run_grid(GRID, settings, jobs=2) == 0  # resumed: reruns nothing (checked below)
    return settings, calls


def _calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_search_chooses_on_dev_then_runs_the_final_seeds(searched) -> None:
    settings, calls = searched
    chosen = chosen_hparams(GRID, read_rows(settings.out / "runs.jsonl"))
    assert chosen == {
        ("a", "lora"): (("lr", 0.002),),
        ("a", "sam"): (("lr", 0.002), ("rho", 0.1)),
        ("a", "nbar"): (("lr", 0.002), ("mu", 1.0), ("schedule", "cosine")),
    }
    # 3 rates + 2 rho + 4 mu candidates at seed 1; the final seed-1 runs are those same cells; the
    # second run_grid call (resume) added nothing
    assert len(_calls(calls)) == 3 + 2 + 4 + 3 * 2
    finals = [r for r in read_rows(settings.out / "runs.jsonl") if r["seed"] != 1]
    assert {(r["method"], tuple(map(tuple, r["hparams"]))) for r in finals} == {
        (m, hp) for (_, m), hp in chosen.items()
    }


def test_tables_show_the_selection_and_the_final_runs_with_intervals(searched) -> None:
    settings, _ = searched
    text = (settings.out / "tables.md").read_text()
    assert "| a | sam | lr=0.002,rho=0.1 | **51.0** (chosen) |" in text
    assert "| a | lora | lr=0.001 | 50.9 |" in text
    assert "Runs shown: 9;" in text  # the final runs only, not the 9 search cells
    lora = [0.6 - 0.001 + 0.001 * s + 0.003 * (s % 2) for s in (1, 2, 3)]
    row = next(line for line in text.splitlines() if line.startswith("| LoRA |"))
    assert row.split(" | ")[1] == f"{100 * statistics.fmean(lora):.1f} ± {100 * statistics.stdev(lora):.1f}"
    intervals = text.split("mean [95 % t interval]; * = the interval excludes 0:")[1]
    nbar = next(line for line in intervals.splitlines() if line.startswith("| LoRA-nBAR"))
    assert nbar == "| LoRA-nBAR | +2.00 [+2.00, +2.00]* |"  # + 0.02 in every seed: no spread
    worst = text.split("`sharpness/worst`, paired difference to LoRA")[1]
    sam = next(line for line in worst.splitlines() if line.startswith("| LoRA-SAM"))
    assert sam.startswith("| LoRA-SAM | -0.1 [-0.1, -0.1]*")


def test_a_failed_search_candidate_is_not_chosen() -> None:
    rows = [
        {"grid": GRID.name, "task": "a", "method": "lora", "seed": 1, "hparams": [["lr", lr]]}
        | {"status": status, "dev_metrics": {"val/accuracy": dev}}
        for lr, status, dev in ((0.001, "ok", 0.4), (0.002, "failed", 0.9), (0.004, "ok", 0.5))
    ]
    cells = [c for c in reproduce.search_cells(GRID, {})]
    assert reproduce.select(GRID, rows, cells, "a", "lora") == (("lr", 0.004),)
    with pytest.raises(
        SystemExit, match="no candidate of lora on a finished with a dev metric 'val/accuracy'"
    ):
        reproduce.select(GRID, rows[1:2], cells, "a", "lora")


def test_bar_strength_is_the_sum_of_the_schedules_products() -> None:
    """Σ_t η_t μ_t against transformers' linear warm-up/decay and μ_t written out by hand."""
    lr, mu, steps, warmup = 2e-3, 1.5, 50, math.ceil(0.06 * 50)
    eta = [lr * (t / warmup if t < warmup else (steps - t) / (steps - warmup)) for t in range(steps)]
    linear = sum(e * mu * (1 - t / steps) for t, e in enumerate(eta))
    cosine = sum(e * mu * 0.5 * (1 + math.cos(math.pi * t / steps)) for t, e in enumerate(eta))
    assert bar_strength(lr, mu, "linear", steps) == pytest.approx(linear, rel=1e-12)
    assert bar_strength(lr, mu, "cosine", steps) == pytest.approx(cosine, rel=1e-12)
    assert bar_strength(lr, mu, "constant", steps) == pytest.approx(mu * sum(eta), rel=1e-12)


def test_t_interval() -> None:
    assert t_quantile_975(4) == 2.776 and t_quantile_975(1) == 12.706
    assert t_quantile_975(200) == pytest.approx(1.972, abs=0.001)  # t, not the normal 1.960, past the table
    with pytest.raises(ValueError, match="degrees of freedom must be >= 1, got 0"):
        t_quantile_975(0)
    values = [1.0, 2.0, 4.0, 5.0, 3.0]
    mean, half = mean_ci(values)
    assert mean == 3.0 and half == pytest.approx(2.776 * statistics.stdev(values) / math.sqrt(5))
    assert math.isnan(mean_ci([1.0])[1])


def test_the_tuned_grid_searches_the_papers_grid_plus_rho_001() -> None:
    grid = GRIDS["offline-tuned"]
    assert grid.search is not None and grid.sharpness and len(grid.seeds) >= 5 and len(grid.tasks) >= 3
    assert [hp for ((_, hp),) in grid.search.space("sam")] == [0.01, 0.05, 0.1, 0.2]
    for method in ("nbar", "obar"):
        space = {(dict(c)["mu"], dict(c)["schedule"]) for c in grid.search.space(method)}
        assert space == {(mu, h) for mu in (0.5, 1.0, 2.0) for h in ("linear", "cosine")}
    for method in ("flatlora", "bilora"):  # the successors' own radius, not the module's rho (refused)
        assert [dict(c) for c in grid.search.space(method)] == [
            {"successor_rho": 0.05},
            {"successor_rho": 0.1},
        ]


def test_successor_cells_tune_their_callback_and_skip_the_per_pair_flag(tmp_path: Path) -> None:
    """The successors' method files end with their own callback: the radius goes there, and the
    balancedness callbacks' log_per_pair flag (which it does not take) is left out."""
    settings = reproduce.Settings(tmp_path, None, None, per_pair=True)
    cell = reproduce.Cell("sst2", "flatlora", 13, "x.yaml", hparams=(("lr", 0.002), ("successor_rho", 0.1)))
    args = reproduce.cell_args(cell, settings, "fit")
    assert "--trainer.callbacks.init_args.log_per_pair" not in args
    assert args[args.index("--trainer.callbacks.init_args.rho") + 1] == "0.1"
    nbar = reproduce.cell_args(reproduce.Cell("sst2", "nbar", 13, "x.yaml"), settings, "fit")
    assert "--trainer.callbacks.init_args.log_per_pair" in nbar
