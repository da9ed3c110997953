"""Smoke tests of scripts/benchmark_step.py and scripts/overparam_study.py (tiny models, one round)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_benchmark_smoke_writes_every_row_ratio_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    rows = ["LoRA", "SAM", "torch loop", "HF Trainer"]
    cmd = [sys.executable, str(SCRIPTS / "benchmark_step.py"), "--model", "tiny", "--lm", "tiny"]
    cmd += ["--rounds", "1", "--steps", "2", "--warmup", "1", "--batch", "4", "--length", "8"]
    cmd += ["--lm-shape", "2", "8", "--memory-steps", "1", "--threads", "1", "--json", str(out)]
    cmd += ["--rows", *rows, "--memory-rows", "LM FSAM"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "round 1/1" in done.stdout and "| target |" in done.stdout
    result = json.loads(out.read_text())
    assert list(result["summary"]["rows"]) == rows
    for clock in ("wall", "cpu"):
        assert [len(result["times"][clock][r]) for r in rows] == [1] * len(rows)  # one round
        assert [len(result["times"][clock][r][0]) for r in rows] == [1] * len(rows)  # 2 steps - 1 warm-up
    targets = {t["ratio"]: t for t in result["summary"]["targets"]}
    assert set(targets) == {"SAM / LoRA", "LoRA / torch loop"}
    sam = result["times"]["wall"]["SAM"][0][0] / result["times"]["wall"]["LoRA"][0][0]
    assert targets["SAM / LoRA"]["wall"]["median"] == pytest.approx(sam)
    (memory,) = result["memory"]
    assert memory["row"] == "LM FSAM" and "vocabulary 1000" in memory["model"]
    assert memory["peak_mib"] >= memory["before_mib"] > 0


def test_benchmark_distributed_rows_under_ddp_and_fsdp2_on_two_processes(tmp_path: Path) -> None:
    """``--strategies ddp fsdp2``: the rows train on 2 CPU processes, FSDP2's with every parameter a
    sharded DTensor; a step's wall time is the slower rank's, its CPU time the ranks' sum; the
    ratios are taken within each strategy and between them; peak memory comes per process."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPTS / "benchmark_step.py"), "--model", "tiny", "--rounds", "1"]
    cmd += ["--steps", "2", "--warmup", "1", "--batch", "4", "--length", "8", "--threads", "1"]
    cmd += ["--rows", "--strategies", "ddp", "fsdp2", "--distributed-methods", "LoRA", "SAM"]
    cmd += ["--memory-rows", "FSDP2 SAM", "--memory-steps", "1", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    dist, rows = result["distributed"], ["DDP LoRA", "DDP SAM", "FSDP2 LoRA", "FSDP2 SAM"]
    assert result["summary"]["rows"] == {} and list(dist["times"]["wall"]) == rows  # no single-process rows
    assert dist["meta"]["all_parameters_sharded"] == {"DDP LoRA": False, "DDP SAM": False,
                                                      "FSDP2 LoRA": True, "FSDP2 SAM": True}  # fmt: skip
    ranks = dist["per_rank_times"]
    for row in rows:  # one round, 2 steps - 1 warm-up, per rank
        (wall0,), (wall1,) = ranks["0"]["wall"][row], ranks["1"]["wall"][row]
        (cpu0,), (cpu1,) = ranks["0"]["cpu"][row], ranks["1"]["cpu"][row]
        assert dist["times"]["wall"][row] == [[max(wall0[0], wall1[0])]]
        assert dist["times"]["cpu"][row] == [[cpu0[0] + cpu1[0]]]
    ratios = {r["ratio"]: r for r in dist["summary"]["ratios"]}
    assert set(ratios) == {"DDP SAM / DDP LoRA", "FSDP2 SAM / FSDP2 LoRA", "FSDP2 LoRA / DDP LoRA",
                           "FSDP2 SAM / DDP SAM"}  # fmt: skip
    wall = {row: dist["times"]["wall"][row][0][0] for row in rows}
    assert ratios["FSDP2 SAM / DDP SAM"]["wall"]["median"] == pytest.approx(
        wall["FSDP2 SAM"] / wall["DDP SAM"]
    )
    assert (
        ratios["FSDP2 SAM / FSDP2 LoRA"]["limit"] == 2.05 and ratios["FSDP2 SAM / DDP SAM"]["limit"] is None
    )
    (memory,) = dist["memory"]
    assert memory["row"] == "FSDP2 SAM" and [r["rank"] for r in memory["per_rank"]] == [0, 1]
    for rank in memory["per_rank"]:
        assert rank["fit_peak_mib"] >= rank["train_peak_mib"] >= rank["train_start_mib"] > 0
    assert "| FSDP2 SAM |" in done.stdout and "VmHWM" in done.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "2", "--warmup", "2"], "--warmup must be in [0, --steps)"),
        (["--rounds", "0"], "--rounds must be >= 1"),
        (["--rows", "LoRA", "nonsense"], "--rows ['nonsense']: not available here"),
        (["--memory-rows", "LM nonsense"], "--memory-rows ['LM nonsense']: unknown"),
        (["--rows"], "--rows is empty and no --strategies: nothing to time"),
        (["--strategies", "fsdp2", "--processes", "3"], "--processes 3 with --batch 16: need >= 2 processes"),
        (["--strategies", "fsdp2", "--distributed-methods", "Bi-LoRA"], "invalid choice: 'Bi-LoRA'"),
        (["--memory-rows", "FSDP2 SAM"], "--memory-rows ['FSDP2 SAM']: unknown"),  # no --strategies
    ],
)
def test_benchmark_refuses_bad_arguments_by_name(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from lit_bar.experiments.benchmark import cli as bench

    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_benchmark_ratio_interval_and_verdicts() -> None:
    from lit_bar.experiments.benchmark import report as bench

    a = [[2.0, 2.2], [3.0], [2.0], [4.0], [2.1]]
    b = [[1.0], [1.0], [1.0], [2.0], [1.0]]
    stats = bench.ratio_stats(a, b)
    assert stats["per_round"] == pytest.approx([2.1, 3.0, 2.0, 2.0, 2.1])
    assert stats["median"] == pytest.approx(2.1)  # per-round ratios; pooled medians would give 2.15
    assert stats["ci95"][0] <= stats["median"] <= stats["ci95"][1]
    assert bench.verdict({"ci95": [1.9, 2.04]}, 2.05) == "met"
    assert bench.verdict({"ci95": [2.0, 2.2]}, 2.05) == "inside the noise"
    assert bench.verdict({"ci95": [2.06, 2.2]}, 2.05) == "missed"


def test_overparam_t_interval_matches_the_t_table() -> None:
    from lit_bar.experiments import stats as study

    # two-sided 95 % t quantiles (any statistics table); the normal 1.96 would miss all but the last
    for df, quantile in [(1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (39, 2.023)]:
        assert study.t_quantile_975(df) == pytest.approx(quantile, abs=0.004)
    mean, half = study.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(3.182 * (5 / 3) ** 0.5 / 2, abs=0.01)
    # Welch: a = [1, 2, 3] (var 1, n 3), b = [0, 0, 1] (var 1/3, n 3): se² = 1/3 + 1/9, df = 3.2
    diff, half = study.welch_ci([1.0, 2.0, 3.0], [0.0, 0.0, 1.0])
    assert diff == pytest.approx(5 / 3) and half == pytest.approx(3.10 * (4 / 9) ** 0.5, abs=0.02)


def test_overparam_resumes_without_rerunning_finished_runs(tmp_path: Path) -> None:
    from lit_bar.experiments.overparam import results as study

    done = {
        "part": "mlp_width",
        "params": 0,
        "n_train": 200,
        "overparam": 1.0,
        "method": "base",
        "seed": 0,
        "train_acc": 0.5,
        "test_acc": 0.5,
        "seconds": 0.0,
    }
    study.write_csv([{**done, "size": 4}, {**done, "size": 64}], tmp_path / "results.csv")
    cmd = [sys.executable, str(SCRIPTS / "overparam_study.py"), "--quick", "--parts", "mlp"]
    cmd += ["--methods", "base", "--num-seeds", "1", "--out", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "resuming: 2 runs" in run.stdout and "[1/1] mlp size=512 base seed=0" in run.stdout
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["size"], r["test_acc"]) for r in rows[:2]] == [("4", "0.5"), ("64", "0.5")]
    assert len(rows) == 3 and rows[2]["size"] == "512"
