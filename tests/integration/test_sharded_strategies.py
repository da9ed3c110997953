"""Which strategies ``SAMModule`` runs under: DDP and FSDP2 (``ModelParallelStrategy`` with tensor
parallel size 1, or ``fsdp2``) yes; FSDP1 and DeepSpeed are refused with a message that names the
strategy and the FSDP2 spelling. (FSDP2 training itself: tests/integration/test_fsdp2.py.)"""

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


def test_fsdp1_is_refused_naming_the_fsdp2_spelling() -> None:
    module = _with_strategy(FSDPStrategy())
    with pytest.raises(
        ValueError,
        match=r"strategy FSDPStrategy \(FSDP1\): NOPModule shards with FSDP2.*--trainer.strategy fsdp2",
    ):
        module.setup("fit")


def test_deepspeed_is_refused() -> None:
    # constructing it needs the deepspeed package; the check only asks for the class
    module = _with_strategy(DeepSpeedStrategy.__new__(DeepSpeedStrategy))
    with pytest.raises(
        ValueError, match=r"--trainer.strategy DeepSpeedStrategy: NOPModule .* does not run under DeepSpeed"
    ):
        module.setup("fit")


def test_model_parallel_is_accepted_with_tensor_parallel_size_1_only() -> None:
    _with_strategy(ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)).setup("fit")
    module = _with_strategy(ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2))
    with pytest.raises(
        ValueError, match=r"tensor_parallel_size 2: NOPModule supports FSDP2 over data parallelism only"
    ):
        module.setup("fit")


def test_ddp_is_accepted() -> None:
    _with_strategy(DDPStrategy()).setup("fit")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a CUDA device")
def test_lit_bar_fit_with_fsdp_fails_with_the_message_on_gpu(tmp_path) -> None:
    trainer = Trainer(
        accelerator="gpu", devices=1, strategy="fsdp", max_steps=1, logger=False, default_root_dir=tmp_path
    )
    with pytest.raises(ValueError, match="shards with FSDP2 instead"):
        trainer.fit(NOPModule(rho=0.05), ToyNoiseDataModule(shape=(10, 10), steps=2))


def test_fp16_loss_scaling_under_fsdp2_is_refused() -> None:
    from lightning.pytorch.plugins.precision import MixedPrecision

    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    strategy.precision_plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(
        ValueError, match=r"--trainer.precision 16-mixed under FSDP2: .*use --trainer.precision bf16-mixed"
    ):
        _with_strategy(strategy).setup("fit")


@pytest.mark.parametrize(("fsdp", "deepspeed"), [("full_shard", None), (None, "ds_config.json")])
def test_the_transformers_bar_callback_refuses_the_trainers_sharding(fsdp, deepspeed) -> None:
    from lit_bar.hf import BalancednessTrainerCallback

    args = SimpleNamespace(fsdp=fsdp, deepspeed=deepspeed, report_to=[])
    with pytest.raises(ValueError, match=r"BalancednessTrainerCallback under the Trainer's FSDP/DeepSpeed"):
        BalancednessTrainerCallback().on_train_begin(args, None, None, model=torch.nn.Linear(2, 2))
