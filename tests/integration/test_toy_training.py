"""The paper's toy-problem facts (Thm. 1-3, Fig. 1 and 2), checked through ``Trainer.fit``.

Short runs (≤ 300 steps) with a larger step size and radius than the figures use, chosen so that
each effect is clear with a margin (plain-torch simulations of the same rules gave the numbers
quoted in the comments).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.toy import BalancednessTrace, NOPModule, OPModule, ToyNoiseDataModule


def _ratio(
    problem: str, alpha: float, lr: float, steps: int, rho: float = 0.0, bar: str | None = None
) -> float:
    """|B_T| / |B_0| of one run through the Trainer (SGD base optimizer)."""
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
    return abs(trace.values[-1]) / abs(trace.values[0])


@pytest.mark.parametrize("problem", ["nop", "op"])
def test_sgd_with_a_small_step_conserves_balancedness(problem):
    """Thm. 1: B is conserved by SGD up to O(η²) per step (simulation, 100 steps: 0.998 NOP, 1.000 OP)."""
    assert _ratio(problem, alpha=1.0, lr=1e-3, steps=100) == pytest.approx(1.0, abs=0.01)


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


@pytest.mark.parametrize("config", ["nop", "op"])
def test_toy_configs_run_functional_sam_through_the_cli(config, tmp_path):
    """The toy modules expose f = x yᵀ / xᵀ y apart from the loss, so Functional-SAM composes with them."""
    from lit_bar.cli import main

    root = Path(__file__).resolve().parents[2]
    main(
        [
            "fit",
            "--config", str(root / "configs" / "toy" / f"{config}.yaml"),
            "--config", str(root / "configs" / "method" / "fsam.yaml"),
            "--config", str(root / "configs" / "debug.yaml"),
            "--trainer.default_root_dir", str(tmp_path),
        ]
    )  # fmt: skip
