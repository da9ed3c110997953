"""The tuned grid's figure (test metric against worst-case sharpness): which runs become points."""

from __future__ import annotations

import json

from lit_bar.experiments.reproduce.grids import GRIDS
from lit_bar.experiments.reproduce.sharpness_figure import plot_sharpness, sharpness_points

GRID = GRIDS["offline-tuned"]


def _row(task, method, hparams, worst, value, metric="test/accuracy", status="ok"):
    return {
        "grid": GRID.name, "task": task, "method": method, "seed": 13, "hparams": hparams,
        "status": status, "metrics": {"sharpness/worst": worst, metric: value},
        "dev_metrics": {metric.replace("test/", "val/"): value},
    }  # fmt: skip


def test_points_need_both_figures_an_ok_status_and_the_grid():
    rows = [
        _row("sst2", "lora", [["lr", 0.002]], 0.05, 0.83),
        _row("sst2", "sam", [["lr", 0.002], ["rho", 0.05]], 0.03, 0.84),
        _row("sst2", "sam", [["lr", 0.002], ["rho", 0.1]], 0.02, 0.80, status="failed"),
        {**_row("sst2", "lora", [["lr", 0.001]], 0.07, 0.81), "grid": "offline"},
        {**_row("stsb", "lora", [["lr", 0.002]], 0.5, 0.78), "metrics": {"test/pearson": 0.78}},
        _row("stsb", "lora", [["lr", 0.004]], 0.6, 0.77, metric="test/pearson"),
    ]
    chosen = {("sst2", "sam", (("lr", 0.002), ("rho", 0.05)))}
    points = sharpness_points(GRID, rows, chosen)
    assert [(p["method"], p["worst"], p["value"]) for p in points["sst2"]] == [("sam", 0.03, 0.84)]
    assert points["stsb"] == [] and points["cb"] == []  # not chosen: their test metrics stay unshown
    points = sharpness_points(GRID, rows)  # a grid without a search: every ok row with both figures
    assert [(p["method"], p["worst"], p["value"]) for p in points["sst2"]] == [
        ("lora", 0.05, 0.83),
        ("sam", 0.03, 0.84),
    ]
    assert [(p["worst"], p["metric"]) for p in points["stsb"]] == [(0.6, "test/pearson")]


def test_the_figure_is_written(tmp_path):
    rows = [_row("sst2", "lora", [["lr", v]], 0.05 + v, 0.8 + v) for v in (0.001, 0.002, 0.004)]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = plot_sharpness(tmp_path, GRID)
    assert path == tmp_path / "sharpness_vs_test.png" and path.stat().st_size > 1000


def test_the_axis_names_the_grids_measurement(monkeypatch):
    from lit_bar.experiments.reproduce import sharpness_figure

    assert sharpness_figure.worst_label() == "worst-case sharpness (ρ = 0.05, 3 ascent steps)"
    monkeypatch.setitem(sharpness_figure.SHARPNESS_MONITOR, "init_args", {"rho": 0.1, "ascent_steps": 1})
    assert sharpness_figure.worst_label() == "worst-case sharpness (ρ = 0.1, 1 ascent step)"
