"""scripts/reproduce.py with fake cells: resume, failures, per-child memory, tables, dry run, errors."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

from lit_bar.experiments.reproduce import runner as reproduce
from lit_bar.experiments.reproduce.grids import GRIDS, Grid, Task
from lit_bar.experiments.reproduce.tables import format_cell, read_rows

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

# A fake cell: records that it ran, holds ~60 MB, writes a result whose accuracy depends on the cell,
# and fails (exit 3) when the method is "sam" and FAIL_SAM is in the environment.
FAKE = """
import json, os, sys
from pathlib import Path
spec = Path(sys.argv[1]); cell = json.loads(spec.read_text())["cell"]
with open(os.environ["CALLS"], "a") as f:
    f.write(f"{cell['task']}/{cell['method']}/{cell['seed']}\\n")
ballast = bytearray(60 * 2**20)
if cell["method"] == "sam" and os.environ.get("FAIL_SAM"):
    sys.exit(3)
accuracy = 0.5 + 0.1 * (cell["method"] == "nbar") + 0.01 * cell["seed"] + 0.05 * (cell["task"] == "b")
metrics = {"test/accuracy": accuracy, "test/loss": 1.0}
result = {"metrics": metrics, "abs_balancedness": 1.5, "commands": ["x"]}
(spec.parent / "result.json").write_text(json.dumps(result))
"""

GRID = Grid(
    "fake",
    "Fake grid",
    (Task("a", "a.yaml", metric="test/accuracy"), Task("b", "b.yaml")),
    ("lora", "sam", "nbar"),
    (1, 2),
)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[reproduce.Settings, Path]:
    script = tmp_path / "fake_cell.py"
    script.write_text(FAKE)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("CALLS", str(calls))
    monkeypatch.setattr(reproduce, "child_command", lambda spec: [sys.executable, str(script), str(spec)])
    monkeypatch.setitem(reproduce.GRIDS, "fake", GRID)
    return reproduce.Settings(tmp_path / "out", None, None, False), calls


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_resume_skips_finished_cells_and_reruns_an_interrupted_one(fake) -> None:
    settings, calls = fake
    settings.out.mkdir()
    assert reproduce.run_grid(GRID, settings, jobs=2) == 0
    rows = read_rows(settings.out / "runs.jsonl")
    assert len(rows) == 12 and len(_calls(calls)) == 12
    assert {(r["task"], r["method"], r["seed"]) for r in rows} == {
        (c.task, c.method, c.seed) for c in GRID.cells()
    }
    assert all(r["peak_rss_mb"] >= 60 for r in rows)  # each child's own ru_maxrss
    assert reproduce.run_grid(GRID, settings, jobs=2) == 0
    assert len(_calls(calls)) == 12  # nothing reran
    # interrupted: the last cell's row never got written (and a torn line is left), its log dir is stale
    lines = (settings.out / "runs.jsonl").read_text().splitlines()
    lost = json.loads(lines[-1])
    (settings.out / "runs.jsonl").write_text("\n".join(lines[:-1]) + '\n{"grid": "fa')
    stale = settings.out / "logs" / f"{lost['task']}/{lost['method']}/seed{lost['seed']}" / "stale.txt"
    stale.write_text("half a run")
    assert reproduce.run_grid(GRID, settings, jobs=1) == 0
    assert _calls(calls)[12:] == [f"{lost['task']}/{lost['method']}/{lost['seed']}"]
    assert not stale.exists()  # rerun from its start
    assert len(read_rows(settings.out / "runs.jsonl")) == 12


def test_failed_cell_is_recorded_and_rerun_next_time(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, calls = fake
    settings.out.mkdir()
    monkeypatch.setenv("FAIL_SAM", "1")
    assert reproduce.run_grid(GRID, settings, jobs=1) == 4  # sam × 2 tasks × 2 seeds
    failed = [r for r in read_rows(settings.out / "runs.jsonl") if r["status"] == "failed"]
    assert len(failed) == 4 and all(r["returncode"] == 3 for r in failed)
    monkeypatch.delenv("FAIL_SAM")
    assert reproduce.run_grid(GRID, settings, jobs=1) == 0
    assert sorted(_calls(calls)[12:]) == sorted(f"{t}/sam/{s}" for t in "ab" for s in (1, 2))


def test_tables_are_mean_and_sample_std_over_seeds_with_an_average(fake) -> None:
    settings, _ = fake
    settings.out.mkdir()
    reproduce.run_grid(GRID, settings, jobs=2)
    text = (settings.out / "tables.md").read_text()
    a_nbar = [0.5 + 0.1 + 0.01 * s for s in (1, 2)]
    b_nbar = [v + 0.05 for v in a_nbar]
    mean_a, std_a = 100 * sum(a_nbar) / 2, 100 * ((a_nbar[0] - a_nbar[1]) ** 2 / 2) ** 0.5  # ddof = 1
    avg = (100 * sum(a_nbar) / 2 + 100 * sum(b_nbar) / 2) / 2
    row = next(line for line in text.splitlines() if line.startswith("| LoRA-nBAR"))
    assert row.split(" | ")[1] == f"{mean_a:.1f} ± {std_a:.1f}"
    assert row.rstrip(" |").split(" | ")[-1] == f"{avg:.1f}"
    assert "Runs shown: 12;" in text and "PARTIAL" not in text
    paired = text.split("Difference to LoRA, paired by seed")[1]
    nbar = next(line for line in paired.splitlines() if line.startswith("| LoRA-nBAR"))
    assert nbar == "| LoRA-nBAR | 10.00 ± 0.00 | 10.00 ± 0.00 | 10.00 |"  # + 0.1 in every seed and task
    assert "b: `test/accuracy`" in text  # no metric given: the first test metric that is not a loss


def test_partial_table_says_so() -> None:
    assert format_cell([0.8], expected=3) == "80.0 (n = 1)"
    assert format_cell([0.8, 0.9, 0.7], expected=3) == f"80.0 ± {100 * statistics.stdev([0.8, 0.9, 0.7]):.1f}"
    assert format_cell([], expected=3) == "—"


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert (
        reproduce.main(["--grid", "offline", "--dry-run", "--out", str(out), "--model", str(tmp_path)]) == 0
    )
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lit-bar fit")]
    offline = GRIDS["offline"]
    assert len(commands) == len(offline.tasks) * len(offline.methods) * len(offline.seeds) == 36
    assert "--config configs/method/obar.yaml" in commands[3] and "--seed_everything 13" in commands[0]
    assert "--data.init_args.seed 42" in commands[-1]
    assert not out.exists()


def test_paper_grids_use_the_readme_commands_over_the_paper_seeds(capsys: pytest.CaptureFixture) -> None:
    reproduce.main(["--grid", "table1", "--dry-run"])
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lit-bar fit")]
    assert len(commands) == 6 * 4 * 5
    assert all((SCRIPTS.parent / c.split()[3]).is_file() for c in commands)  # the task file exists


@pytest.mark.parametrize("flag", ["--data-root", "--model"])
def test_missing_model_or_data_path_is_named(tmp_path: Path, flag: str) -> None:
    missing = str(tmp_path / "nowhere")
    args = ["--grid", "offline", "--out", str(tmp_path / "out"), flag, missing]
    if flag == "--data-root":
        args += ["--model", str(tmp_path)]
    with pytest.raises(SystemExit, match=f"'{missing}"):
        reproduce.main(args)


def test_unknown_task_is_named() -> None:
    with pytest.raises(SystemExit, match=r"grid 'offline' has no task \['mnli'\]"):
        reproduce.main(["--grid", "offline", "--tasks", "mnli", "--dry-run"])


def _fake_log(path: Path, values: dict[int, tuple[float, float]]) -> None:
    """A metrics.csv with the mean and two per-pair columns at the given steps."""
    path.parent.mkdir(parents=True)
    pairs = ["layer.0.attention.self.query.default", "layer.0.attention.self.value.default"]
    header = (
        "bar/abs_balancedness," + ",".join(f"bar/abs_balancedness/{p}" for p in pairs) + ",step,train/loss"
    )
    lines = [header] + [f"{(a + b) / 2},{a},{b},{s},0.5" for s, (a, b) in values.items()]
    path.write_text("\n".join(lines) + "\n")


def test_plot_reads_the_grid_logs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lit_bar.experiments.reproduce.balancedness_figure import load_runs, plot_from_logs

    for seed, drift in ((1, 0.2), (2, 0.4)):
        _fake_log(
            tmp_path / f"logs/t/lora/seed{seed}/fit/metrics.csv", {4: (1.0, 2.0), 9: (1.0 + drift, 2.0)}
        )
        _fake_log(tmp_path / f"logs/t/nbar/seed{seed}/fit/metrics.csv", {4: (1.0, 2.0), 9: (1.0, 2.0)})
    runs = load_runs(tmp_path, "t")
    assert list(runs) == ["lora", "nbar"] and len(runs["lora"]) == 2
    png = plot_from_logs(tmp_path, "t", tmp_path / "fig.png")
    assert png.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert (
        "lora  2 seeds: mean |B| 1.5000 at the first logged step, 1.6500 last" in out
    )  # (1.3 + 2) / 2 averaged


def test_plot_without_logs_says_what_to_run(tmp_path: Path) -> None:
    from lit_bar.experiments.reproduce.balancedness_figure import plot_from_logs

    with pytest.raises(SystemExit, match=r"run scripts/reproduce\.py first"):
        plot_from_logs(tmp_path, "t", tmp_path / "fig.png")


def test_tables_only_without_runs_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no runs\.jsonl in"):
        reproduce.main(["--tables-only", "--out", str(tmp_path / "empty")])


def test_partial_grid_is_tabulated_over_its_complete_seeds(fake) -> None:
    settings, _ = fake
    settings.out.mkdir()
    reproduce.run_grid(GRID, settings, jobs=2)
    rows = read_rows(settings.out / "runs.jsonl")
    kept = [r for r in rows if not (r["seed"] == 2 and r["method"] == "sam" and r["task"] == "a")]
    (settings.out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    text = reproduce.write_tables(settings.out, reproduce.GRIDS).read_text()
    assert "PARTIAL: 11 of 12 runs finished" in text
    assert "(a [1], b [1, 2]); 2 runs of unfinished seeds" in text  # per task: b is whole
    assert "of unfinished seeds are in runs.jsonl only." in text
    row = next(line for line in text.splitlines() if line.startswith("| LoRA-nBAR"))
    assert row.split(" | ")[1] == f"{100 * (0.5 + 0.1 + 0.01):.1f} (n = 1)"  # seed 1 only
    assert row.split(" | ")[2].startswith(f"{100 * (0.5 + 0.1 + 0.015 + 0.05):.1f} ± ")  # task b: seeds 1, 2
    assert "Cost so far: 11 runs, " in text and "CPU-hours over the 11 that record `cpu_s`." in text
    cpu_table = text.split("CPU time per run, s")[1].split("\n\n")[1].splitlines()
    lora_b = [r["cpu_s"] for r in kept if (r["method"], r["task"]) == ("lora", "b")]
    assert cpu_table[2].split(" | ")[2].startswith(f"{statistics.fmean(lora_b):.0f} ± ")
    for row in kept:  # rows of a release before `cpu_s`: their wall time, said as such
        row.pop("cpu_s")
    (settings.out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    text = reproduce.write_tables(settings.out, reproduce.GRIDS).read_text()
    wall = sum(r["wall_s"] for r in kept) / 3600
    assert f"Cost so far: 11 runs, {wall:.2f} wall-hours of one core over the 11 without it." in text
    assert "CPU time per run" not in text  # no table of blanks
