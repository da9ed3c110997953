"""Which Lightning strategies the SAM step runs under, and ``fsdp2``: FSDP2 over data parallelism.

- DDP (and one process): yes.
- ``ModelParallelStrategy`` (FSDP2, ``torch.distributed.fsdp.fully_shard``) with tensor parallel size
  1: yes. The module shards itself in ``configure_model`` (:meth:`lit_bar.SAMModule.configure_model`);
  the SAM step and BAR read the local shards and reduce their norms in one all-reduce
  (:mod:`lit_bar.algorithms.sharded`).
- :class:`FSDP2Strategy` (``--trainer.strategy fsdp2``): the same, with the data-parallel size set to
  every process of the run and tensor parallel size 1, so no size needs spelling out.
- ``FSDPStrategy`` (FSDP1) and DeepSpeed: refused, naming the FSDP2 spelling.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import (
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    StrategyRegistry,
)
from typing_extensions import override

__all__ = ["FSDP2_FLAGS", "FSDP2Strategy", "check_strategy", "is_fsdp2"]

#: How to ask for FSDP2 on the command line (both spellings work).
FSDP2_FLAGS = (
    "--trainer.strategy fsdp2, or --trainer.strategy ModelParallelStrategy "
    "--trainer.strategy.data_parallel_size <processes> --trainer.strategy.tensor_parallel_size 1"
)


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` for data-parallel FSDP2 only: every process in the data-parallel
    mesh dimension, tensor parallel size 1, and the checkpoint written as one file by rank 0
    (``save_distributed_checkpoint=False``), so ``--ckpt_path``, lit_bar's checkpoint checks and the
    lean LoRA-only checkpoints work as under DDP. Registered as ``"fsdp2"``."""

    strategy_name = "fsdp2"

    def __init__(self, save_distributed_checkpoint: bool = False, **kwargs: Any) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    @override
    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(
            cls.strategy_name, cls, description="FSDP2 over data parallelism (lit_bar)"
        )


if "fsdp2" not in StrategyRegistry:
    FSDP2Strategy.register_strategies(StrategyRegistry)


def is_fsdp2(strategy: object) -> bool:
    """Whether ``strategy`` shards with FSDP2 (``ModelParallelStrategy`` or :class:`FSDP2Strategy`)."""
    return isinstance(strategy, ModelParallelStrategy)


def check_strategy(strategy: object, owner: str) -> None:
    """Refuse the strategies the SAM step cannot run under, naming the supported spelling.

    Raises:
        ValueError: FSDP1, DeepSpeed, ``ModelParallelStrategy`` with tensor parallel size > 1, or
            FSDP2 with fp16 loss scaling (a ``GradScaler`` judges each process's gradient shards
            alone, so processes could skip different steps and drift apart).
    """
    name = type(strategy).__name__
    if isinstance(strategy, FSDPStrategy):
        raise ValueError(
            f"--trainer.strategy {name} (FSDP1): {owner} shards with FSDP2 instead: {FSDP2_FLAGS} "
            "(README: 'Many GPUs and many machines')"
        )
    if isinstance(strategy, DeepSpeedStrategy):
        raise ValueError(
            f"--trainer.strategy {name}: {owner} (SAM, nBAR/oBAR, LoRA) does not run under DeepSpeed: "
            f"use --trainer.strategy ddp, or FSDP2 to shard: {FSDP2_FLAGS}"
        )
    if isinstance(strategy, ModelParallelStrategy):
        size = getattr(strategy, "_tensor_parallel_size", 1)
        mesh = getattr(strategy, "_device_mesh", None)
        if mesh is not None and "tensor_parallel" in (mesh.mesh_dim_names or ()):
            size = mesh["tensor_parallel"].size()
        if size != 1 and size != "auto":
            raise ValueError(
                f"--trainer.strategy.tensor_parallel_size {size}: {owner} supports FSDP2 over data "
                f"parallelism only (tensor parallel size 1): {FSDP2_FLAGS}"
            )
        plugin = getattr(strategy, "precision_plugin", None)
        if getattr(plugin, "scaler", None) is not None:
            raise ValueError(
                f"--trainer.precision {getattr(plugin, 'precision', '16-mixed')} under FSDP2: fp16 loss "
                f"scaling is not supported with sharded gradients in {owner} (each process's GradScaler "
                "sees only its shards); use --trainer.precision bf16-mixed, bf16-true or 32-true"
            )
