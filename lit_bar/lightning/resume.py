"""What an exact resume needs beyond Lightning's own state (the random generators), and preemption.

Lightning saves no RNG state, so a resumed run draws fresh dropout masks. These functions turn the
torch, CUDA, numpy and Python ``random`` states into tensors, ints and floats only, which
``torch.load(weights_only=True)`` accepts, and back. :class:`lit_bar.SAMModule` stores one entry per
process in ``checkpoint["rng_states"]`` and restores its own at ``on_train_start``, i.e. after the
fit loop has built the training loader and its iterator (the loaders of ``lit_bar.data`` draw their
seeds from their own generators, so building them does not move the global state either).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = [
    "PreemptionCheckpoint",
    "collect_rng_states",
    "dead_peer_message",
    "gather_per_rank",
    "restore_rng_states",
]


def collect_rng_states() -> dict[str, Any]:
    """The generators' states of this process, as tensors and plain numbers."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(mt_state, dtype=torch.int64),
            "gauss": gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the generators from :func:`collect_rng_states`'s output (CUDA only where it was saved)."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["state"].tolist()), python_state["gauss"]))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            rank_zero_warn(
                f"the checkpoint holds CUDA RNG states of {len(cuda)} devices, this process sees "
                f"{torch.cuda.device_count()}: CUDA generators not restored (dropout masks will differ)"
            )
        else:
            torch.cuda.set_rng_state_all(cuda)


def gather_per_rank(value: Any, world_size: int) -> list[Any]:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (just ``[value]`` in one process).

    A collective under DDP: every rank must call it, which ``Trainer.save_checkpoint`` already
    requires (it ends with a barrier on every rank).
    """
    if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, _to_cpu(value))
    return gathered


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


class PreemptionCheckpoint(pl.Callback):
    """On SIGTERM during ``fit`` (what SLURM and most schedulers send before they preempt a job):
    save ``preempted-step=<N>.ckpt`` beside the run's checkpoints and say so in one line.

    Lightning's signal handler only notes the signal; its training loop then stops at the end of
    the micro-batch in progress by raising ``SIGTERMException`` (a ``SystemExit``), and this
    callback's ``on_exception`` saves there, a mid-epoch (or mid-window) checkpoint that resumes
    exactly (``--ckpt_path last`` picks it, being the newest). ``lit-bar`` then exits with status 143
    (128 + SIGTERM), so that ``lit-bar fit ... && lit-bar test ...`` does not test a cut-short run.
    Nothing is saved for any other exception (a NaN stop, a crash): those states are no good to
    resume from.
    """

    def __init__(self, filename: str = "preempted-step={step}") -> None:
        self.filename = filename
        self.saved: Path | None = None

    def _folder(self, trainer: pl.Trainer) -> Path:
        callback = trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            return Path(callback.dirpath)
        log_dir = trainer.log_dir if trainer.loggers else None
        return Path(log_dir or trainer.default_root_dir) / "checkpoints"

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        path = self._folder(trainer) / f"{self.filename.format(step=trainer.global_step)}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        self.saved = path
        rank_zero_info(
            f"lit-bar: SIGTERM: stopped at step {trainer.global_step} (epoch {trainer.current_epoch}) and "
            f"saved a resumable checkpoint: {path}; resume with --ckpt_path last (or that path)"
        )


_PARENT_PID = os.getppid()  # a DDP rank > 0 started by rank 0: rank 0's pid


def dead_peer_message(err: BaseException, launcher: Any = None) -> str | None:
    """One line for a collective that failed because another process of a multi-process run ended:
    which rank it was and how it ended, where this process can tell (``None`` for other errors).

    Rank 0 started the other ranks (Lightning's ``ddp`` launcher, ``launcher.procs``) and sees their
    exit status; a rank > 0 sees that its parent, rank 0, is gone.
    """
    if not isinstance(err, RuntimeError) or not (dist.is_available() and dist.is_initialized()):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    if world < 2:
        return None
    dead: list[str] = []
    for i, proc in enumerate(getattr(launcher, "procs", None) or [], start=1):
        code = proc.poll()
        if code is not None:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            dead.append(f"rank {i} (pid {proc.pid}) {how}")
    if rank != 0 and os.getppid() != _PARENT_PID:
        dead.append(f"its parent process (pid {_PARENT_PID}; rank 0 under Lightning's ddp launcher) is gone")
    from_backend = isinstance(err, getattr(dist, "DistError", ())) or any(
        word in str(err) for word in ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer")
    )
    if not dead and not from_backend:
        return None  # an error of this process's own (a bug, bad input): shown as it is
    who = "; ".join(dead) if dead else "another process of this run stopped answering"
    what = " ".join(str(err).strip().splitlines()[:1])[:160]
    return f"rank {rank} of {world}: {who}, so a collective failed and this one stops too ({what})"
