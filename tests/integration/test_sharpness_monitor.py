"""SharpnessMonitor through ``lit-bar fit`` / ``lit-bar test`` on a tiny RoBERTa, and under 2-process DDP."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sharpness_ddp_script
from tiny.hf import glue_cli_args, read_metrics, tiny_sst2
from tiny.sam import make_net

from lit_bar.callbacks import SharpnessMonitor
from lit_bar.callbacks.sharpness import fixed_batches
from lit_bar.cli import LitBarCLI, cli_kwargs, main
from lit_bar.sharpness import measure_sharpness

KEYS = [
    "sharpness/worst",
    "sharpness/worst_stderr",
    "sharpness/average",
    "sharpness/average_stderr",
    "sharpness/hessian_top",
    "sharpness/hessian_top_change",
]


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_sst2(tmp_path_factory.mktemp("sharpness"))


def _sharpness(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("sharpness/")}


def test_fit_and_test_log_the_same_figures_of_the_same_weights(
    sst2_like: tuple[Path, Path], tmp_path: Path
) -> None:
    """After fit (train mode, dropout on in the tiny RoBERTa) and in two ``lit-bar test`` calls from the
    checkpoint: the six keys, beside test/accuracy in the test's metrics.csv, equal every time."""
    model, data = sst2_like
    main(
        [
            "fit",
            *glue_cli_args(model, data, "sam", tmp_path / "fit"),
            "--trainer.callbacks+",
            "SharpnessMonitor",
        ]
    )
    fitted = _sharpness(read_metrics(tmp_path / "fit" / "logs"))
    assert sorted(fitted) == sorted(KEYS)
    assert fitted["sharpness/worst"] > 0 and fitted["sharpness/hessian_top"] > 0
    (ckpt,) = (tmp_path / "fit").rglob("*.ckpt")
    tested = []
    for call in ("test1", "test2"):
        args = glue_cli_args(model, data, "sam", tmp_path / call)
        main(["test", *args, "--ckpt_path", str(ckpt), "--trainer.callbacks+", "SharpnessMonitor"])
        metrics = read_metrics(tmp_path / call / "logs")
        assert "test/accuracy" in metrics
        tested.append(_sharpness(metrics))
    assert tested[0] == tested[1]  # deterministic
    assert tested[0] == pytest.approx(fitted, rel=1e-6)  # fit measured in eval mode, on the same rows


def test_test_of_a_run_trained_without_the_monitor(sst2_like: tuple[Path, Path], tmp_path: Path) -> None:
    """Any run: the monitor appears only in ``lit-bar test``; its arguments come from the command line."""
    model, data = sst2_like
    main(["fit", *glue_cli_args(model, data, "lora", tmp_path / "fit", logger=False)])
    (ckpt,) = (tmp_path / "fit").rglob("*.ckpt")
    monitor = json.dumps(
        {"class_path": "lit_bar.callbacks.SharpnessMonitor", "init_args": {"measures": ["worst"], "rho": 0.1}}
    )
    args = glue_cli_args(model, data, "lora", tmp_path / "test")
    main(["test", *args, "--ckpt_path", str(ckpt), "--trainer.callbacks+", monitor])
    logged = _sharpness(read_metrics(tmp_path / "test" / "logs"))
    assert sorted(logged) == ["sharpness/worst", "sharpness/worst_stderr"]
    assert logged["sharpness/worst"] > 0


class _Snapshot(Callback):
    """Before the monitor's on_train_end: the weights, modes, grads and generators; after it: compare."""

    def __init__(self) -> None:
        self.before: dict = {}
        self.same: dict[str, bool] = {}

    @staticmethod
    def state(module: torch.nn.Module) -> dict:
        return {
            "weights": {k: v.clone() for k, v in module.state_dict().items()},
            "modes": {name: m.training for name, m in module.named_modules()},
            "grads": [None if p.grad is None else p.grad.clone() for p in module.parameters()],
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state()[1].copy(),
            "python": random.getstate(),
        }

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.before:
            self.before = self.state(pl_module)
            return
        after = self.state(pl_module)
        self.same = {
            "weights": all(torch.equal(v, after["weights"][k]) for k, v in self.before["weights"].items()),
            "modes": after["modes"] == self.before["modes"],
            "grads": all(
                (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
                for a, b in zip(self.before["grads"], after["grads"], strict=True)
            ),
            "torch": torch.equal(after["torch"], self.before["torch"]),
            "numpy": bool((after["numpy"] == self.before["numpy"]).all()),
            "python": after["python"] == self.before["python"],
        }


def test_the_measurement_after_fit_leaves_weights_modes_grads_and_generators(
    sst2_like: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = sst2_like
    args = glue_cli_args(model, data, "sam", tmp_path, logger=False)
    cli = LitBarCLI(**cli_kwargs(run=False), args=args)
    snapshot, monitor = _Snapshot(), SharpnessMonitor(num_batches=2, directions=2, power_iterations=2)
    cli.trainer.callbacks.extend([snapshot, monitor, snapshot])  # the same probe before and after
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert sorted(monitor.results) == sorted(KEYS)
    assert snapshot.before["modes"][""]  # measured from train mode ...
    assert snapshot.same == dict.fromkeys(snapshot.same, True) and len(snapshot.same) == 6  # ... and back


def test_two_ddp_processes_log_the_same_numbers_as_one_measurement(tmp_path: Path) -> None:
    """Every rank measures the same rows (not its DistributedSampler share) and logs rank 0's figures;
    they equal a single-process measurement of the final weights on those rows."""
    script = Path(sharpness_ddp_script.__file__)
    command = [sys.executable, str(script), "--devices", "2", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert sorted(rank0["results"]) == sorted(KEYS)
    assert rank0["results"] == rank1["results"]
    assert rank0["local"] == rank1["local"]  # computed, not only broadcast, alike
    assert all(torch.equal(a, b) for a, b in zip(rank0["params"], rank1["params"], strict=True))

    net = make_net(dropout=0.2)
    with torch.no_grad():
        for p, trained in zip(net.parameters(), rank0["params"], strict=True):
            p.copy_(trained)
    settings = sharpness_ddp_script.MONITOR
    loader = torch.utils.data.DataLoader(sharpness_ddp_script.dataset(), batch_size=4)
    batches = fixed_batches(loader, settings["num_batches"], settings["batch_size"], seed=0)
    monitor = SharpnessMonitor(**settings)

    def loss_fn(batch):
        return torch.nn.functional.mse_loss(net(batch[0]), batch[1])

    common = dict(
        rho=monitor.rho,
        ascent_steps=monitor.ascent_steps,
        directions=monitor.directions,
        average_rho=monitor.average_rho,
        iterations=monitor.power_iterations,
        tolerance=monitor.tolerance,
        module=net,
    )
    params = list(net.parameters())
    reference = measure_sharpness(loss_fn, params, batches, ["worst"], **common)  # per batch, all
    pooled = batches[: settings["pooled_batches"]]  # the pooled figures: the first two batches
    reference |= measure_sharpness(loss_fn, params, pooled, ["average", "hessian_top"], **common)
    for name, estimate in reference.items():
        assert rank0["results"][f"sharpness/{name}"] == pytest.approx(estimate.value, rel=1e-9)
