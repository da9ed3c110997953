"""Sharded strategies (FSDP, DeepSpeed, model parallel) are refused by ``SAMModule`` when fitting, with
a message that names the strategy and what to use instead (``ddp``); DDP and evaluation pass."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from lit_bar.toy import NOPModule, ToyNoiseDataModule


def _with_strategy(strategy: object) -> NOPModule:
    module = NOPModule(rho=0.05)
    module._trainer = SimpleNamespace(
        strategy=strategy
    )  # what setup reads; FSDP needs a GPU to build a Trainer
    return module


SHARDED = {
    "fsdp": FSDPStrategy,
    "model_parallel": ModelParallelStrategy,
    # constructing it needs the deepspeed package; the check only asks for the class
    "deepspeed": lambda: DeepSpeedStrategy.__new__(DeepSpeedStrategy),
}


@pytest.mark.parametrize("name", list(SHARDED))
def test_fit_under_a_sharded_strategy_is_refused(name: str) -> None:
    strategy = SHARDED[name]()
    module = _with_strategy(strategy)
    expected = (
        rf"--trainer.strategy {type(strategy).__name__}: NOPModule .* does not support sharded strategies"
    )
    with pytest.raises(ValueError, match=rf"{expected} yet.*Use --trainer.strategy ddp"):
        module.setup("fit")
    module.setup("validate")  # evaluation runs no SAM step


def test_ddp_is_accepted() -> None:
    _with_strategy(DDPStrategy()).setup("fit")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a CUDA device")
def test_lit_bar_fit_with_fsdp_fails_with_the_message_on_gpu(tmp_path) -> None:
    trainer = Trainer(
        accelerator="gpu", devices=1, strategy="fsdp", max_steps=1, logger=False, default_root_dir=tmp_path
    )
    with pytest.raises(ValueError, match="does not support sharded strategies yet"):
        trainer.fit(NOPModule(rho=0.05), ToyNoiseDataModule(shape=(10, 10), steps=2))
