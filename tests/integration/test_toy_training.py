"""The paper's toy-problem facts (Thm. 1-3, Fig. 1 and 2), checked through ``Trainer.fit``.

Short runs (≤ 300 steps) with a larger step size and radius than the figures use, chosen so that
each effect is clear with a margin (plain-torch simulations of the same rules gave the numbers
quoted in the comments).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.toy import BalancednessTrace, NOPModule, OPModule, ToyNoiseDataModule


def _ratio(
    problem: str, alpha: float, lr: float, steps: int, rho: float = 0.0, bar: str | None = None
) -> float:
    """|B_T| / |B_0| of one run through the Trainer (SGD base optimizer)."""
    return _fit(problem, alpha, lr, steps, rho, bar)[0]


def _fit(
    problem: str, alpha: float, lr: float, steps: int, rho: float = 0.0, bar: str | None = None
) -> tuple[float, NOPModule | OPModule]:
    """|B_T| / |B_0| of one run through the Trainer (SGD base optimizer), and the trained module."""
    kwargs = {"alpha": alpha, "rho": rho, "optimizer": lambda p: torch.optim.SGD(p, lr=lr)}
    module = NOPModule(**kwargs) if problem == "nop" else OPModule(**kwargs)
    trace = BalancednessTrace()
    callbacks = [trace]
    if bar is not None:
        callbacks.append(BalancednessCallback(mode=bar, mu=1.0, pairs=module.pairs()))
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    shape = (10, 10) if problem == "nop" else ()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        trainer.fit(module, ToyNoiseDataModule(shape=shape, steps=steps, seed=1))
    assert trace.steps[0] == 0 and trace.steps[-1] == steps
    assert trace.values[0] == pytest.approx(0.5 * (9.0 - 0.09), rel=1e-5)
    return abs(trace.values[-1]) / abs(trace.values[0]), module


@pytest.mark.parametrize("problem", ["nop", "op"])
def test_sgd_with_a_small_step_conserves_balancedness(problem):
    """Thm. 1: B is conserved by SGD up to O(η²) per step (simulation, 100 steps: 0.998 NOP, 1.000 OP).

    Not because nothing trained: ‖y‖² (0.09 at the start) grows by over 25% (simulation: 0.05 NOP,
    0.027 OP), ‖x‖² by about as much, and B = ½(‖x‖² − ‖y‖²) moves by under a quarter of that.
    """
    start = NOPModule() if problem == "nop" else OPModule()
    ratio, module = _fit(problem, alpha=1.0, lr=1e-3, steps=100)
    assert ratio == pytest.approx(1.0, abs=0.01)
    moved_y = float(module.y.detach().square().sum() - start.y.detach().square().sum())
    assert moved_y > 0.25 * 0.09
    assert abs(ratio - 1.0) * 0.5 * (9.0 - 0.09) < 0.25 * moved_y


@pytest.mark.parametrize("problem", ["nop", "op"])
def test_sam_shrinks_balancedness_faster_with_more_noise(problem):
    """Thm. 2 (NOP) and 3 (OP): SAM shrinks |B|, faster at lower SNR (larger α).

    Simulation, η=1e-2, ρ=0.3, 300 steps: NOP 0.28 (α=0.5) vs 0.04 (α=2); OP 0.41 vs 0.10.
    """
    clean = _ratio(problem, alpha=0.5, lr=1e-2, steps=300, rho=0.3)
    noisy = _ratio(problem, alpha=2.0, lr=1e-2, steps=300, rho=0.3)
    assert clean < 0.65
    assert noisy < 0.5 * clean


def test_sam_drives_op_balancedness_to_zero():
    """Thm. 3: on OP, B contracts toward 0 (simulation, η=1e-2, ρ=0.5, α=2, 300 steps: 0.001)."""
    assert _ratio("op", alpha=2.0, lr=1e-2, steps=300, rho=0.5) < 0.03


def test_nbar_drives_nop_balancedness_down():
    """nBAR (Alg. 2) mimics SAM on NOP (Fig. 2b; simulation, η=1e-2, μ=1, α=1, 300 steps: 0.02)."""
    assert _ratio("nop", alpha=1.0, lr=1e-2, steps=300, bar="nbar") < 0.1


class ToyRecorder(Callback):
    """Keeps a toy run's start, every batch (noise) and end, for the hand-written reference."""

    seen: ClassVar[dict] = {}

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        ToyRecorder.seen = {
            "x0": pl_module.x.detach().double().clone(),
            "y0": pl_module.y.detach().double().clone(),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "batches": [],
        }

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        ToyRecorder.seen["batches"].append(batch.detach().double().clone())

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        seen = ToyRecorder.seen
        seen.update(x=pl_module.x.detach().double(), y=pl_module.y.detach().double(), module=pl_module)


def hand_toy(problem: str, seen: dict, rho: float, functional: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD + SAM / Functional-SAM on NOP (f = x yᵀ) or OP (f = xᵀ y) from closed forms, in float64.

    L = mean_i ½‖f − (target + α Nᵢ)‖², so ∂L/∂f = R = f − target − α mean(N); g_x = R y and
    g_y = Rᵀ x (NOP) or R x (OP). SAM descends with R at w + ε, Functional-SAM with R at w
    (docs/algorithms.md §2, §5), both through the Jacobian at w + ε.
    """
    module = seen["module"]
    target = module.target.double() if problem == "nop" else module.target
    x, y = seen["x0"].clone(), seen["y0"].clone()

    def out(x, y):
        return torch.outer(x, y) if problem == "nop" else torch.dot(x, y)

    def grads(r, x, y):
        return (r @ y, r.T @ x) if problem == "nop" else (r * y, r * x)

    for noise in seen["batches"]:
        data = target + module.alpha * noise.mean(dim=0)
        r = out(x, y) - data
        gx, gy = grads(r, x, y)
        norm = torch.sqrt(gx.square().sum() + gy.square().sum())
        xe, ye = x + rho * gx / norm, y + rho * gy / norm
        gx, gy = grads(r if functional else out(xe, ye) - data, xe, ye)
        x, y = x - seen["lr"] * gx, y - seen["lr"] * gy
    return x, y


@pytest.mark.parametrize("config", ["nop", "op"])
def test_toy_configs_run_functional_sam_through_the_cli(config, tmp_path):
    """fsam.yaml on the toy configs: the CLI run's (x, y) equal closed-form Functional-SAM, and not
    SAM or plain SGD (which differ from it by more than 10× the tolerance)."""
    from lit_bar.cli import main

    root = Path(__file__).resolve().parents[2]
    main(
        [
            "fit",
            "--config", str(root / "configs" / "toy" / f"{config}.yaml"),
            "--config", str(root / "configs" / "method" / "fsam.yaml"),
            "--config", str(root / "configs" / "debug.yaml"),
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.callbacks+", json.dumps({"class_path": f"{__name__}.ToyRecorder"}),
        ]
    )  # fmt: skip
    seen = ToyRecorder.seen
    rho = seen["module"].rho
    assert rho > 0 and len(seen["batches"]) == 4
    got = torch.cat([seen["x"], seen["y"]])
    expected = torch.cat(hand_toy(config, seen, rho, functional=True))
    tol = 2e-6  # float32 run against a float64 reference
    sam, sgd = hand_toy(config, seen, rho, functional=False), hand_toy(config, seen, 0.0, functional=True)
    for wrong in (sam, sgd):  # measured: 8e-4 / 5e-4 (NOP), 1e-3 / 6e-5 (OP)
        assert (torch.cat(wrong) - expected).abs().max() > 10 * tol
    assert (got - expected).abs().max() < tol  # measured: 2e-7 (NOP), 9e-8 (OP)
