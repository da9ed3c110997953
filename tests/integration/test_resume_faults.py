"""Preemption, as people meet it: ``kill -9`` or SIGTERM of ``lit-bar fit`` mid-epoch, then the obvious
command, ``lit-bar fit ... --ckpt_path last``, ends bit-identical to a run that was never stopped;
killing one DDP rank ends the other at once with one line saying which rank died.

Each run is the shipped GLUE SST-2 config with LoRA-nBAR (linear μ decay) and a warm-up schedule on
a tiny random RoBERTa (dropout on), 2 epochs of 4 batches, a CSV logger (so each run makes a new
``version_N`` folder, as a user's runs do) and a checkpoint after every optimizer step. The stopped
runs are real ``lit-bar`` processes; :class:`Pause` holds one at a chosen micro-batch so that the
signal lands mid-epoch every time. The comparison is of everything a resume restores: the trainable
weights and buffers, the optimizer state, the LR schedule, BAR's μ schedule position, the RNG states.

Before (issue 19): ``--ckpt_path last`` found nothing in the new ``version_1`` folder, Lightning
printed one warning and the run trained from scratch (its step-8 checkpoint then differed from the
straight run's); SIGTERM made Lightning stop after the current batch and exit 0 without a checkpoint;
a killed DDP rank left the other with a gloo traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import ROOT, tiny_sst2

from lit_bar.cli import main

HERE = Path(__file__).resolve().parent
FINAL = "step=8.ckpt"  # 2 epochs x 4 batches
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]  # on CPU: gloo


class Pause(pl.Callback):
    """At the end of micro-batch ``at`` on the ranks in ``ranks``: write ``<flag>.rank<r>`` (holding the
    pid) and wait (up to 300 s) until SIGTERM arrives or the process is killed."""

    def __init__(self, flag: str, at: int, ranks: list[int] | None = None) -> None:
        self.flag, self.at, self.ranks, self.seen = flag, at, ranks or [0], 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen != self.at or trainer.global_rank not in self.ranks:
            return
        Path(f"{self.flag}.rank{trainer.global_rank}").write_text(str(os.getpid()))
        deadline = time.monotonic() + 300
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


def _args(paths: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    model_dir, data_dir = paths
    every_step = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "filename": "{step}"},
    }
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(out / "logs")},
    }
    return [
        "fit",
        "--config", str(ROOT / "configs/glue/roberta-large_sst2.yaml"),
        "--config", str(ROOT / "configs/method/nbar.yaml"),
        "--model.init_args.model_name_or_path", str(model_dir),
        "--data.init_args.data_dir", str(data_dir),
        "--data.init_args.batch_size", "4",
        "--data.init_args.max_length", "32",
        "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out),
        "--trainer.logger", json.dumps(logger),
        "--trainer.callbacks+", json.dumps(every_step),
        *extra,
    ]  # fmt: skip


def _pause(flag: Path, at: int, ranks: tuple[int, ...] = (0,)) -> list[str]:
    pause = {
        "class_path": "test_resume_faults.Pause",
        "init_args": {"flag": str(flag), "at": at, "ranks": ranks},
    }
    return ["--trainer.callbacks+", json.dumps(pause)]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "lit_bar.cli", *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env
    )


def _wait_for(paths: list[Path], proc: subprocess.Popen, log: Path, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never paused (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _versions(out: Path) -> list[Path]:
    return sorted((out / "logs" / "lightning_logs").glob("version_*"))


def _assert_same_run_state(resumed: Path, straight: Path) -> None:
    a = torch.load(resumed, map_location="cpu", weights_only=True)
    b = torch.load(straight, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    assert len(a["rng_states"]) == len(b["rng_states"])  # one entry per process
    bar = [k for k in a["callbacks"] if "Balancedness" in k]
    assert bar  # BAR's μ schedule position is in the callback's state
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "rng_states", ("callbacks", bar[0])):
        part_a, part_b = (a[key], b[key]) if isinstance(key, str) else (a[key[0]][key[1]], b[key[0]][key[1]])
        flat_a, flat_b = _flatten(part_a), _flatten(part_b)
        assert flat_a.keys() == flat_b.keys(), key
        for name in flat_a:
            x, y = flat_a[name], flat_b[name]
            same = torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
            assert same, f"{key}{name} differs"


def _flatten(value, where: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{where}/{key}").items()}
    if isinstance(value, list | tuple):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{where}/{i}").items()}
    return {where: value}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[Path, Path], Path]:
    """The tiny model and data, and the straight (never stopped) run's final checkpoint."""
    base = tmp_path_factory.mktemp("faults")
    paths = tiny_sst2(base, train=16, validation=4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        main(_args(paths, base / "straight"))
    (base / "warnings.txt").write_text("\n".join(str(w.message) for w in seen))
    (final,) = (base / "straight").rglob(FINAL)
    return paths, final


def test_step_checkpoints_draw_no_manual_optimization_warning(runs) -> None:
    """Lightning warns that a ``ModelCheckpoint(every_n_train_steps=...)`` file under manual
    optimization holds the weights after the step; that is the state the exact resumes here load,
    so ``lit-bar`` does not show the warning (it did before)."""
    _, final = runs
    said = (final.parents[5] / "warnings.txt").read_text()
    assert "Using ModelCheckpoint with manual optimization" not in said and "AFTER optimization" not in said


def test_kill_9_mid_epoch_then_ckpt_path_last_equals_the_straight_run(runs, tmp_path: Path) -> None:
    paths, straight = runs
    out, log = tmp_path / "run", tmp_path / "killed.log"
    proc = _start(_args(paths, out, *_pause(tmp_path / "paused", at=6)), log)  # epoch 2, batch 2
    _wait_for([tmp_path / "paused.rank0"], proc, log)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    (version_0,) = _versions(out)
    saved = sorted(p.name for p in (version_0 / "checkpoints").iterdir())
    assert saved == [f"step={s}.ckpt" for s in range(1, 6)]  # step 6's save was still to come
    main(_args(paths, out, "--ckpt_path", "last"))  # the obvious command: a new version_1 folder
    _, version_1 = _versions(out)
    _assert_same_run_state(version_1 / "checkpoints" / FINAL, straight)
    assert not (version_1 / "checkpoints" / "step=1.ckpt").exists()  # it resumed; it did not start over


def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(runs, tmp_path: Path) -> None:
    paths, straight = runs
    out, log = tmp_path / "run", tmp_path / "term.log"
    proc = _start(_args(paths, out, *_pause(tmp_path / "paused", at=7)), log)  # mid-epoch 2
    _wait_for([tmp_path / "paused.rank0"], proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text
    (version_0,) = _versions(out)
    preempted = version_0 / "checkpoints" / "preempted-step=7.ckpt"
    assert (
        f"lit-bar: SIGTERM: stopped at step 7 (epoch 1) and saved a resumable checkpoint: {preempted}" in text
    )
    main(_args(paths, out, "--ckpt_path", "last"))  # picks preempted-step=7.ckpt, the newest
    _, version_1 = _versions(out)
    _assert_same_run_state(version_1 / "checkpoints" / FINAL, straight)


def test_ckpt_path_last_without_any_checkpoint_says_where_it_looked(
    runs, tmp_path: Path, monkeypatch, capsys
) -> None:
    paths, _ = runs
    monkeypatch.setattr(sys, "argv", ["lit-bar", *_args(paths, tmp_path / "nothing", "--ckpt_path", "last")])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    line = capsys.readouterr().err.splitlines()[0]
    looked = tmp_path / "nothing" / "logs" / "lightning_logs" / "version_*" / "checkpoints"
    assert line.startswith(
        f"lit-bar: error: --ckpt_path last: no checkpoint (*.ckpt) found; looked in '{looked}'"
    )


def test_killing_one_ddp_rank_ends_the_other_with_one_line(runs, tmp_path: Path) -> None:
    """2 processes (gloo): rank 1 is held at micro-batch 3 and killed; rank 0, waiting in the next
    gradient all-reduce, stops within seconds, without a traceback, saying which rank died.

    Two things race there: gloo's error in rank 0 (``lit-bar`` catches it and prints its line, exit
    status 1), and Lightning's child-process observer in rank 0 (every 5 s: it logs ``[rank: 1] Child
    process with PID ... terminated with code -9`` and SIGKILLs rank 0). Either way one line names
    rank 1 and its pid; which comes first varies from run to run."""
    paths, _ = runs
    out, log = tmp_path / "run", tmp_path / "ddp.log"
    proc = _start(_args(paths, out, *DDP, *_pause(tmp_path / "paused", at=3, ranks=(1,))), log)
    _wait_for([tmp_path / "paused.rank1"], proc, log)
    rank1 = int((tmp_path / "paused.rank1").read_text())
    time.sleep(1.0)  # rank 0 reaches the all-reduce of micro-batch 4
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    code = proc.wait(timeout=120)
    took = time.monotonic() - killed
    text = log.read_text()
    ours = f"lit-bar: error: rank 0 of 2: rank 1 (pid {rank1}) was killed by signal 9, so a collective failed"
    lightnings = f"[rank: 1] Child process with PID {rank1} terminated with code -9."
    lines = [line for line in text.splitlines() if line.startswith((ours, lightnings))]
    assert lines and code in (1, -signal.SIGKILL), (code, text[-3000:])
    assert code == -signal.SIGKILL or lines[0].startswith(ours)  # exit 1 only through lit-bar's line
    assert "Traceback" not in text and "lit-bar: error:" not in text.replace(ours, "")
    assert took < 30, took


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[Path, Path], Path]:
    """Tiny data with 4 batches per rank and epoch, and the straight 2-process run's final checkpoint."""
    base = tmp_path_factory.mktemp("ddp-faults")
    paths = tiny_sst2(base / "data", train=32, validation=4)
    straight = _start(_args(paths, base / "straight", *DDP), base / "straight.log")
    assert straight.wait(timeout=600) == 0, (base / "straight.log").read_text()[-3000:]
    (final,) = (base / "straight").rglob(FINAL)
    return paths, final


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["kill_9_both", "sigterm_rank0"])
def test_ddp_stopped_mid_epoch_then_ckpt_path_last_equals_the_straight_run(ddp_runs, tmp_path, stop) -> None:
    """2 processes (gloo), stopped at micro-batch 6: both killed (a node lost), or SIGTERM to rank 0
    (Lightning forwards it to rank 1; both save ``preempted-step=6.ckpt`` together and exit 143); then
    resumed with ``--ckpt_path last`` on 2 processes. Slow (2-process runs); the default suite's
    ``test_resume.py::test_ddp_resume_mid_window_equals_the_straight_run`` checks exact DDP resume."""
    paths, straight = ddp_runs
    out, log = tmp_path / "run", tmp_path / "stopped.log"
    proc = _start(_args(paths, out, *DDP, *_pause(tmp_path / "paused", at=6, ranks=(0, 1))), log)
    _wait_for([tmp_path / "paused.rank0", tmp_path / "paused.rank1"], proc, log)
    if stop == "kill_9_both":
        for rank in (1, 0):
            os.kill(int((tmp_path / f"paused.rank{rank}").read_text()), signal.SIGKILL)
        proc.wait(timeout=60)
    else:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
        assert "saved a resumable checkpoint" in log.read_text() and "Traceback" not in log.read_text()
    resumed = _start(_args(paths, out, *DDP, "--ckpt_path", "last"), tmp_path / "resumed.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    _, version_1 = _versions(out)
    _assert_same_run_state(version_1 / "checkpoints" / FINAL, straight)
