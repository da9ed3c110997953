"""Flat-LoRA and Bi-LoRA inside the transformers ``Trainer``, as ``TrainerCallback`` s.

Both are one forward/backward per micro-batch, so they need no Trainer subclass (``SAMTrainer`` is
for SAM's two passes; with these callbacks use a plain ``Trainer``, or ``SAMTrainer`` with ρ = 0).
Where they run in ``Trainer._inner_training_loop`` (transformers 5.x; see lit_bar/hf/callback.py)::

    on_step_begin          ← Flat-LoRA: W ← W + ε_t (t = state.global_step), before the first micro-batch
    backward of every micro-batch (accumulated; DDP all-reduce on the last)
    accelerator.clip_grad_norm_  (unscales fp16 gradients; the auxiliary ones are not the model's)
    on_pre_optimizer_step  ← Bi-LoRA: [DDP] mean of the auxiliary gradients; ascent step (through
                             accelerate's GradScaler under fp16); global clipping to ρ
    optimizer.step()
    on_optimizer_step      ← Flat-LoRA: W ← W − ε_t (drawn again from its seed)
    ... on_step_end, logging, evaluation (the noise is off; the auxiliary pair is inactive in eval mode)

Resuming from a Trainer checkpoint draws the same Flat-LoRA noise (ε depends on the seed, t and the
layer only). Bi-LoRA's auxiliary pair is not in the model, so ``BiLoRATrainerCallback`` writes it and
its optimizer to ``checkpoint-<step>/bilora_auxiliary.pt`` beside each Trainer checkpoint
(``on_save``) and reads it back at the first step of a resumed run (the Trainer loads its state only
after ``on_train_begin``) from ``args.resume_from_checkpoint`` if set, else from
``<output_dir>/checkpoint-<step>`` (what ``trainer.train(resume_from_checkpoint=True)`` resumes from;
the Trainer does not tell callbacks a path given to ``train()``). A resumed run without that file
warns and restarts the auxiliary pair. The saved peft adapter holds the primary LoRA only.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging
from typing_extensions import override

from lit_bar.engine import all_reduce_sum
from lit_bar.methods.bilora import BiLoRA, validate_bilora_settings
from lit_bar.methods.flatlora import FlatLoRA, validate_flat_settings

__all__ = ["BiLoRATrainerCallback", "FlatLoRATrainerCallback"]

logger = logging.get_logger(__name__)


class FlatLoRATrainerCallback(TrainerCallback):
    """Flat-LoRA (Li et al., ICML 2025): per-step noise N(0, σ_t²/n·‖W'_i‖²) on each LoRA base weight.

    Example::

        trainer = Trainer(model=peft_model, args=args, train_dataset=train,
                          callbacks=[FlatLoRATrainerCallback(rho=0.05)])

    Args:
        rho: σ ≥ 0, the final noise strength (paper: 0.05 for T5/Llama 2, 0.15 for CLIP ViT).
        schedule: ``"cosine"`` (the paper's), ``"linear"`` or ``"constant"`` ramp from 0 (``flat_sigma``).
        total_steps: T of the ramp; ``None`` takes ``state.max_steps``.
        seed: The noise seed.
        restore: ``"regenerate"`` (the paper's) or ``"copy"`` (bfloat16/float16 base weights).
    """

    def __init__(
        self,
        rho: float = 0.05,
        schedule: str = "cosine",
        total_steps: int | None = None,
        seed: int = 0,
        restore: str = "regenerate",
    ) -> None:
        validate_flat_settings(rho, schedule, total_steps, restore)
        self.rho, self.schedule, self.total_steps, self.seed, self.restore = (
            rho,
            schedule,
            total_steps,
            seed,
            restore,
        )
        self.flat: FlatLoRA | None = None

    @override
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        total = self.total_steps or (state.max_steps if state.max_steps > 0 else None)
        self.flat = FlatLoRA(kwargs["model"], self.rho, self.schedule, total, self.seed, self.restore)
        logger.info(
            f"FlatLoRATrainerCallback: noise on {len(self.flat.layers)} LoRA base weights, rho={self.rho}"
        )

    @override
    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.flat.perturb(state.global_step)

    @override
    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.flat.restore()

    @override
    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.flat is not None:
            self.flat.restore()


class BiLoRATrainerCallback(TrainerCallback):
    """Bi-LoRA (Liu et al., ICLR 2026): an auxiliary LoRA pair per layer, ascended in the same backward.

    Args:
        rho: ρ > 0, the radius of the auxiliary perturbation (global over all layers).
        aux_lr: η₂; ``None`` takes ``args.learning_rate``. It follows the primary's LR schedule.
        aux_optimizer: ``"adamw"`` (``maximize=True``, no weight decay) or ``"sgd"`` (plain ascent).
        rank: The auxiliary rank; ``None`` takes each layer's primary rank.
        seed: Seeds the auxiliary A₂.
    """

    def __init__(
        self,
        rho: float = 0.05,
        aux_lr: float | None = None,
        aux_optimizer: str = "adamw",
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        validate_bilora_settings("BiLoRATrainerCallback", rho, aux_lr, aux_optimizer, rank)
        self.rho, self.aux_lr, self.aux_optimizer, self.rank, self.seed = (
            rho,
            aux_lr,
            aux_optimizer,
            rank,
            seed,
        )
        self.bilora: BiLoRA | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._first_step = True

    #: the auxiliary state's file in a Trainer checkpoint folder
    FILENAME = "bilora_auxiliary.pt"

    @override
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.bilora = BiLoRA(kwargs["model"], self.rho, self.rank, self.seed)
        lr = self.aux_lr if self.aux_lr is not None else args.learning_rate
        params = self.bilora.parameters()
        if self.aux_optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, maximize=True)
        else:
            self.optimizer = torch.optim.SGD(params, lr=lr, maximize=True)
        self.optimizer.param_groups[0]["initial_lr"] = lr
        self._first_step = True

    @override
    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not self._first_step:
            return
        self._first_step = False
        if state.global_step == 0:  # a fresh run
            return
        folder = args.resume_from_checkpoint or os.path.join(
            args.output_dir, f"checkpoint-{state.global_step}"
        )
        path = os.path.join(folder, self.FILENAME)
        if not os.path.isfile(path):
            logger.warning(f"BiLoRATrainerCallback: resumed at step {state.global_step} without {path}; "
                           "the auxiliary pair starts again from its initialisation")  # fmt: skip
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.bilora.load_state_dict(saved["bilora"])
        self.optimizer.load_state_dict(saved["optimizer"])

    @override
    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if self.bilora is not None and state.is_world_process_zero and os.path.isdir(folder):
            state_dict = {"bilora": self.bilora.state_dict(), "optimizer": self.optimizer.state_dict()}
            torch.save(state_dict, os.path.join(folder, self.FILENAME))

    @override
    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        optimizer = kwargs["optimizer"]
        params = [p for p in self.bilora.parameters() if p.grad is not None]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world = torch.distributed.get_world_size() if distributed else 1
        if world > 1 and params:
            for p, g in zip(params, all_reduce_sum([p.grad for p in params]), strict=True):
                p.grad = g.div_(world)
        base = optimizer.param_groups[0]
        group = self.optimizer.param_groups[0]
        group["lr"] = group["initial_lr"] * (
            base["lr"] / base["initial_lr"] if base.get("initial_lr") else 1.0
        )
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer holds the GradScaler
        if params:
            if scaler is not None:
                scaler.step(self.optimizer)  # unscales; skips the step on non-finite gradients
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.bilora.project_()

    @override
    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.bilora is not None:
            self.bilora.remove()
