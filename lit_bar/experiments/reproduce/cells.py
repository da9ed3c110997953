"""One cell of a grid: its ``lit-bar`` arguments, and what its child process does (``--run-cell``).

The child runs ``lit-bar fit`` with the task file, the method file and the seed (``--seed_everything
S --data.init_args.seed S``: the seed draws the k-shot sample too), then, with a search, ``lit-bar
validate`` (the dev metric), then ``lit-bar test`` on the run's checkpoint, all through
:func:`lit_bar.cli.main`, the entry point of the ``lit-bar`` command, and writes ``result.json``
beside the run's logs (``OUT/logs/<task>/<method>[/<hparams>]/seed<S>``). The parent reads it into
its ``runs.jsonl`` row (:mod:`lit_bar.experiments.reproduce.runner`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lit_bar.experiments.environment import ROOT
from lit_bar.experiments.reproduce.grids import FLAGS, PER_PAIR_METHODS, Cell, Grid
from lit_bar.experiments.reproduce.tables import last_values

__all__ = ["SHARPNESS_MONITOR", "Settings", "cell_args", "check_inputs", "quote", "run_cell"]


@dataclass
class Settings:
    """Where things are: the model folder (``None``: the task file's), the data root, the output."""

    out: Path
    model: str | None
    data_root: Path | None
    per_pair: bool
    overrides: tuple[str, ...] = ()
    validate: bool = False  # also `lit-bar validate` the final weights (the dev metric of a search)
    sharpness: bool = False  # `lit-bar test` with lit_bar.callbacks.SharpnessMonitor


def check_inputs(grid: Grid, settings: Settings) -> None:
    """Fail before any run, naming a missing model folder or data folder."""
    if settings.model is not None and not Path(settings.model).is_dir():
        raise SystemExit(f"reproduce.py: error: model folder {settings.model!r} does not exist")
    if settings.data_root is None:
        return
    for task in grid.tasks:
        folder = settings.data_root / task.data
        if task.data and not folder.is_dir():
            raise SystemExit(
                f"reproduce.py: error: no data folder {str(folder)!r} for task {task.name!r}: pass "
                "--data-root DIR with <task>/{train,validation,...}.jsonl (README of ../shared/data)"
            )


#: The grids' sharpness measurement in `lit-bar test`: SharpnessMonitor's defaults, with 3 normalised
#: ascent steps for the worst case (k = 1 is SAM's one-step estimate, a lower bound).
SHARPNESS_MONITOR = {"class_path": "lit_bar.callbacks.SharpnessMonitor", "init_args": {"ascent_steps": 3}}


def cell_args(cell: Cell, settings: Settings, stage: str, ckpt: str | None = None) -> list[str]:
    """The ``lit-bar <stage>`` arguments of one cell (the command recorded in runs.jsonl)."""
    log_dir = settings.out / "logs" / cell.key_path
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(log_dir), "name": "", "version": stage},
    }
    args = [stage, "--config", cell.task_config, "--config", f"configs/method/{cell.method}.yaml"]
    if settings.model is not None:
        args += ["--model.init_args.model_name_or_path", settings.model]
    if settings.data_root is not None and cell.data:
        args += ["--data.init_args.data_dir", str(settings.data_root / cell.data)]
    args += ["--seed_everything", str(cell.seed), "--data.init_args.seed", str(cell.seed)]
    args += ["--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar", "false"]
    if (
        settings.per_pair and cell.method in PER_PAIR_METHODS
    ):  # its file's last callback: BalancednessMonitor/-Callback
        args += ["--trainer.callbacks.init_args.log_per_pair", "true"]
    for name, value in cell.hparams:  # mu/schedule: the same last callback, before any is appended
        args += [f"--{FLAGS[name]}", str(value)]
    for override in settings.overrides:
        key, _, value = override.partition("=")
        args += [f"--{key}", value]
    if stage == "validate":  # the task files validate nothing during fit
        args += ["--trainer.limit_val_batches", "1.0"]
    if stage == "test" and settings.sharpness:
        args += ["--trainer.callbacks+", json.dumps(SHARPNESS_MONITOR)]
    if ckpt is not None:
        args += ["--ckpt_path", ckpt]
    return args


def run_cell(spec_path: Path) -> None:
    """Child process: ``lit-bar fit`` then ``lit-bar test`` in-process; writes ``result.json``."""
    from lit_bar.cli import main as lit_bar_main

    spec = json.loads(spec_path.read_text())
    cell, settings = (
        Cell(**spec["cell"]),
        Settings(**{**spec["settings"], "out": Path(spec["settings"]["out"])}),
    )
    settings.data_root = Path(settings.data_root) if settings.data_root else None
    os.chdir(ROOT)
    fit = cell_args(cell, settings, "fit")
    lit_bar_main(fit)
    log_dir = settings.out / "logs" / cell.key_path
    ckpts = sorted((log_dir / "fit" / "checkpoints").glob("*.ckpt"))
    best = [c for c in ckpts if not c.name.startswith("last")] or ckpts
    if not best:
        raise SystemExit(f"reproduce.py: fit left no checkpoint in {log_dir / 'fit' / 'checkpoints'}")
    commands = [fit]
    if settings.validate:
        commands.append(cell_args(cell, settings, "validate", ckpt=str(best[-1])))
        lit_bar_main(commands[-1])
    commands.append(cell_args(cell, settings, "test", ckpt=str(best[-1])))
    lit_bar_main(commands[-1])
    fitted, validated, tested = (
        last_values(log_dir / stage / "metrics.csv") for stage in ("fit", "validate", "test")
    )
    result = {
        "metrics": {k: v for k, v in tested.items() if k.startswith(("test/", "sharpness/"))},
        "abs_balancedness": fitted.get("bar/abs_balancedness"),
        "train_loss": fitted.get("train/loss"),
        "last_logged_step": fitted.get("step"),
        "commands": [" ".join(["lit-bar", *map(quote, a)]) for a in commands],
    }
    if settings.validate:
        result["dev_metrics"] = {k: v for k, v in validated.items() if k.startswith("val/")}
    for ckpt in ckpts:
        ckpt.unlink()  # weights are not results; the logs and the row are
    (log_dir / "result.json").write_text(json.dumps(result, indent=1))


def quote(arg: str) -> str:
    """``arg`` as a shell would need it in the recorded command (JSON and spaces in single quotes)."""
    return f"'{arg}'" if any(c in arg for c in ' {}"[]') else arg
