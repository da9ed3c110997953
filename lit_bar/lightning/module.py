"""``SAMModule``: a LightningModule base whose training step is SAM (Alg. 1), written once.

A subclass builds its network in ``__init__`` (passing ``**kwargs`` up) and implements
``compute_loss(batch) -> Tensor``; Functional-SAM also needs the split ``compute_outputs(batch)``
+ ``loss_from_outputs(outputs, batch)``. One optimizer step over k micro-batches (docs/algorithms.md §2);
the first four lines are :class:`lit_bar.engine.SAMEngine` (shared with ``lit_bar.hf.SAMTrainer``),
this module supplies its loss, the precision plugin's scaling and backward, and DDP's no-sync::

    ascent   for each micro-batch i:  fork RNG_i;  g += ∇(L_i / k)      (autograd.grad: no DDP hook)
             [DDP, m unset: one torch.distributed.all_reduce of g, in g's dtype]
    perturb  ε = ρ g/‖g‖ (adaptive / preconditioned forms: lit_bar.optim.perturbation); save w; w += ε
    descent  for each micro-batch i:  replay RNG_i;  manual_backward(L_i(w + ε) / k)
             (Functional-SAM: manual_backward(f_i(w + ε), gradient=seed_i), the seed ∂(L_i/k)/∂f
             stored in f's dtype and already loss-scaled, so the plugin does not scale it again)
             [DDP: only the last backward all-reduces]
    restore  w ← saved copy (exact)
    step     opt.step() → precision plugin: unscale → on_before_optimizer_step (callbacks, then
             this module: gradient clipping) → scaler.step (skips non-finite) → scaler.update
             then LR schedulers with interval "step"

Logging (on the optimizer steps :func:`lit_bar.lightning.steps.is_logging_step` names: every
``log_every_n_steps``-th *optimizer* step, as the BAR callbacks; nothing is computed or copied to the
host in other steps): ``train/loss`` (also on the progress bar), ``train/grad_norm``
(‖mean ascent gradient‖ over all micro-batches and processes, unscaled), ``train/descent_grad_norm``
(the clipped gradient the optimizer steps with) and ``train/sharpness`` (L(w + ε) − L(w), SAM), with
one device→host copy per logging step.

With ``m`` set each chunk of m examples gets its own ε and is ascended, perturbed, descended and
restored on its own (m-sharpness), so the result is independent of devices and micro-batching.
With ``rho=0`` there is no ascent: one pass per micro-batch, i.e. plain training (the cost of
LoRA, and of BAR on top of it).

Hooks in the SAM path (pinned by tests/integration/test_sam_module_hooks.py): the ascent uses
``torch.autograd.grad`` and fires no backward hook; each descent backward fires
[``on_before_backward`` → ``on_after_backward``]. With ``m`` unset the k descent backwards of a window
all run inside its *last* micro-batch's ``training_step`` (ε needs every micro-batch's gradient
first), so the earlier micro-batches fire only ``on_train_batch_start``/``on_train_batch_end``; with
``m`` set (or ρ = 0) each micro-batch's ``training_step`` runs its own descent backwards (one per chunk).
The last ``training_step`` then fires ``on_before_optimizer_step`` (callbacks, then the module) once
per optimizer step, before that micro-batch's ``on_train_batch_end``. ``trainer.global_step`` counts
optimizer steps: during the n-th step's ``on_before_optimizer_step`` it reads n − 1, at the following
``on_train_batch_end`` n.

Lightning refuses ``Trainer(accumulate_grad_batches>1)`` and ``Trainer(gradient_clip_val>0)`` under
manual optimization, so they are arguments of this module under the same names.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.utils._pytree import tree_flatten
from typing_extensions import override

from lit_bar.algorithms.sharded import fully_shard_blocks
from lit_bar.engine import PERTURBATIONS, SAMEngine
from lit_bar.lightning.checkpoint_hooks import ExactResume
from lit_bar.lightning.compat import drop_earlier_step_values
from lit_bar.lightning.front import EvaluationHooks, LightningFrontEnd, step_schedulers
from lit_bar.lightning.steps import is_logging_step, optimizer_steps, run_length
from lit_bar.lightning.strategies import check_strategy, is_fsdp2
from lit_bar.optim.groups import apply_lr_scales
from lit_bar.optim.perturbation import global_norm
from lit_bar.optim.settings import SAMSettings, check_adam

__all__ = ["PERTURBATIONS", "SAMModule"]


class SAMModule(ExactResume, EvaluationHooks, LightningModule):
    """LightningModule base class with the SAM step built in (manual optimization).

    Args:
        optimizer: Factory ``params -> base optimizer`` (LightningCLI ``OptimizerCallable``).
        lr_scheduler: Optional factory ``optimizer -> LR scheduler``, stepped by this module.
        lr_scheduler_interval: ``"step"`` (once per optimizer step) or ``"epoch"``; a schedule over
            the whole run (``total_steps=None``) is sized in that unit.
        lr_scheduler_monitor: The logged metric a ``ReduceLROnPlateau`` scheduler steps on.
        rho: SAM radius ρ ≥ 0; 0 means plain training (one pass, no perturbation).
        adaptive: Adaptive SAM (ASAM): ε = ρ T² g/‖T g‖, T = |w| on weight matrices.
            A parameter group (from :meth:`parameter_groups`) with its own ``"rho"`` or
            ``"adaptive"`` key uses that for its parameters; ‖g‖ still runs over all groups together
            (as :class:`lit_bar.optim.SAM`).
        m: m-sharpness: each chunk of ``m`` examples gets its own ε (Sec. 4, App. C.3); ``None``
            perturbs the whole optimizer-step batch (all micro-batches, all devices) at once.
        perturbation: ``"sam"``, or ``"functional"`` (Functional-SAM, docs/algorithms.md §5: descent gradient
            J_f(w+ε)ᵀ ∂L/∂f(w); needs ``compute_outputs`` and ``loss_from_outputs``).
        precondition: ``None``, or ``"adam"``: ε ∝ P g with Adam's diagonal preconditioner, ‖ε‖ = ρ.
        accumulate_grad_batches: Micro-batches per optimizer step (takes over the Trainer flag);
            by default exact large-batch SAM over all of them.
        gradient_clip_val: Clip the unscaled descent gradients to this value (Trainer's flag moved here).
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "step",
        lr_scheduler_monitor: str = "val/loss",
        rho: float = 0.05,
        adaptive: bool = False,
        m: int | None = None,
        perturbation: Literal["sam", "functional"] = "sam",
        precondition: Literal["adam"] | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self._resumed: dict[str, Any] = {}  # a checkpoint's RNG states / partial window, for train start
        self.sam_settings = SAMSettings(rho, adaptive, m, perturbation, precondition)  # checked there
        self.rho, self.adaptive, self.m = self.sam_settings.rho, adaptive, m
        self.perturbation, self.precondition = perturbation, precondition
        self.lr_scheduler_interval = _check_choice(
            "lr_scheduler_interval", lr_scheduler_interval, ("step", "epoch")
        )
        self.gradient_clip_algorithm = _check_choice(
            "gradient_clip_algorithm", gradient_clip_algorithm, ("norm", "value")
        )
        if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be an int >= 1, got {accumulate_grad_batches!r}")
        if gradient_clip_val is not None and not gradient_clip_val >= 0:
            raise ValueError(f"gradient_clip_val must be >= 0 or None, got {gradient_clip_val!r}")
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self._engine = SAMEngine(settings=self.sam_settings)  # the step's algorithm
        self._descent_norm: torch.Tensor | None = None

    # ----------------------------------------------------------------- the subclass's part
    def compute_loss(self, batch: Any) -> torch.Tensor:
        """The scalar training loss of ``batch`` (mean over its examples). Override this, or the split."""
        return self.loss_from_outputs(self.compute_outputs(batch), batch)

    def compute_outputs(self, batch: Any) -> torch.Tensor:
        """The outputs f the loss is taken of (logits, candidate scores); Functional-SAM needs it."""
        raise NotImplementedError(
            f"{type(self).__name__} implements neither compute_loss(batch) nor compute_outputs(batch) + "
            "loss_from_outputs(outputs, batch)"
        )

    def loss_from_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """The loss of ``outputs`` (from :meth:`compute_outputs`) on ``batch``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement loss_from_outputs(outputs, batch)"
        )

    def parameter_groups(self) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
        """What the optimizer factory receives: the trainable parameters (override for groups)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ----------------------------------------------------------------- Lightning plumbing
    @override
    def setup(self, stage: str) -> None:
        if self.perturbation == "functional" and not _overrides(self, "compute_outputs", "loss_from_outputs"):
            raise ValueError(
                f"perturbation='functional' needs the network's outputs apart from the loss: "
                f"{type(self).__name__} must implement compute_outputs(batch) and "
                "loss_from_outputs(outputs, batch) "
                "(compute_loss then defaults to their composition)"
            )
        check_strategy(self.trainer.strategy, type(self).__name__)

    @override
    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (FSDP2): shard the network with the strategy's mesh
        (:func:`lit_bar.algorithms.sharded.fully_shard_blocks`: each block named in the model's
        ``_no_split_modules``, or in :attr:`sharded_blocks`, then each child holding parameters);
        nothing otherwise. A subclass that builds its network here calls ``super().configure_model()``
        after building it: that one line is all it needs for sharded training."""
        if self._trainer is not None and is_fsdp2(self.trainer.strategy):  # load_from_checkpoint: none
            fully_shard_blocks(self, self.device_mesh["data_parallel"], self.sharded_blocks)
            # the strategy loads a checkpoint into the module itself, before on_load_checkpoint can
            # put back the frozen weights that lean LoRA-only checkpoints leave out
            self.strict_loading = False

    #: Class names of the blocks FSDP2 shards one by one; ``None``: the model's ``_no_split_modules``.
    sharded_blocks: tuple[str, ...] | None = None

    @override
    def configure_callbacks(self) -> Any:
        """Refuse the Trainer flags this module took over, naming their new place.

        Lightning calls this before its own check of manual optimization, whose message would not
        say where the flags went. Subclasses that add callbacks call ``super().configure_callbacks()``.
        """
        trainer = self.trainer
        moved = {
            "accumulate_grad_batches": trainer.accumulate_grad_batches
            if trainer.accumulate_grad_batches != 1
            else None,
            "gradient_clip_val": trainer.gradient_clip_val or None,
        }
        for flag, value in moved.items():
            if value is not None:
                raise ValueError(
                    f"Trainer({flag}={value!r}): {type(self).__name__} optimizes manually (SAM), and "
                    f"Lightning refuses that flag then; pass it to the module instead: "
                    f"{type(self).__name__}({flag}={value!r}) "
                    f"(--model.init_args.{flag}={value!r} on the command line)"
                )
        return []

    @override
    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        if not groups:
            raise ValueError(
                f"{type(self).__name__} has no trainable parameters (every requires_grad is False)"
            )
        optimizer = apply_lr_scales(self.optimizer(groups))  # groups with "lr_scale" (LoRA+): lr × scale
        self._engine.settings(optimizer.param_groups)  # a group's own rho/adaptive, checked before training
        check_adam(optimizer, self.precondition)
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        if getattr(scheduler, "total_steps", 0) is None and hasattr(scheduler, "set_total_steps"):
            # sized in the unit it steps in (lit_bar.lightning.steps reads the length without the #20550 trap)
            interval = self.lr_scheduler_interval
            scheduler.set_total_steps(run_length(self.trainer, self.accumulate_grad_batches, interval))
        # no "monitor" key: Lightning drops it under manual optimization; _step_schedulers reads
        # lr_scheduler_monitor for a ReduceLROnPlateau instead
        config = {"scheduler": scheduler, "interval": self.lr_scheduler_interval}
        return {"optimizer": optimizer, "lr_scheduler": config}

    def estimated_optimizer_steps(self) -> int:
        """Total optimizer steps of the run: ⌈batches per epoch / accumulation⌉ × epochs, capped by
        ``max_steps`` (whichever ends the run first, as the Trainer does); see
        :mod:`lit_bar.lightning.steps`."""
        return optimizer_steps(self.trainer, self.accumulate_grad_batches)

    @override
    def on_train_start(self) -> None:
        self._apply_resumed_state()
        if self.m is None or self.rho == 0:
            return
        loaders = tree_flatten(self.trainer.train_dataloader)[0]
        for loader in loaders:
            size = getattr(loader, "batch_size", None)
            if size is not None and size % self.m:
                raise ValueError(
                    f"m={self.m} does not divide the training batch size {size}; choose m dividing it"
                )

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the final, unscaled gradients (``gradient_clip_val``); subclasses call ``super()``.

        On logging steps also take the norm of the (clipped) gradients the optimizer steps with.
        """
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)
        if is_logging_step(self.trainer):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            grads = [p.grad for p in params if p.grad is not None]
            self._descent_norm = global_norm(grads) if grads else None

    @override
    def on_train_epoch_end(self) -> None:
        step_schedulers(self, "epoch")

    # ----------------------------------------------------------------- the SAM step
    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        drop_earlier_step_values(self.trainer)  # the loggers get each value once, on its logging step
        last = (batch_idx + 1) % self.accumulate_grad_batches == 0 or self.trainer.is_last_batch
        logging = is_logging_step(self.trainer)  # read on the window's last micro-batch
        loss = self._engine.micro_step(
            LightningFrontEnd(self),
            batch,
            self.optimizers().optimizer.param_groups,  # a group's "rho"/"adaptive" apply to its parameters
            1.0 / self.accumulate_grad_batches,
            last,
            optimizer=self.optimizers().optimizer if self.precondition else None,
            module=self,
            logging=logging,
        )
        if last:
            self._optimizer_step(logging)
        return loss

    def _optimizer_step(self, logging: bool) -> None:
        """opt.step() through the precision plugin (unscale → hooks, clipping → step); log on logging steps.

        ``train/loss`` is the step's mean micro-batch loss; ``train/grad_norm`` ‖mean ascent gradient‖
        (all micro-batches, all processes, unscaled); ``train/descent_grad_norm`` the norm of the
        gradient the optimizer steps with (after clipping); ``train/sharpness`` L(w + ε) − L(w)
        (SAM). They are copied to the host once per logging step and not computed otherwise.
        """
        optimizer = self.optimizers()
        self._descent_norm = None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if logging:
            stats = self._engine.stats()
            if self._descent_norm is not None:
                stats["descent_grad_norm"] = self._descent_norm
            dtype = functools.reduce(torch.promote_types, (v.dtype for v in stats.values()))
            values = torch.stack([v.to(dtype) for v in stats.values()]).cpu()  # the one device→host copy
            for name, value in zip(stats, values, strict=True):
                self.log(f"train/{name}", value, prog_bar=name == "loss")
        step_schedulers(self, "step")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def _overrides(module: SAMModule, *names: str) -> bool:
    return all(getattr(type(module), n) is not getattr(SAMModule, n) for n in names)
