"""``AdapterExport``: leave the trained adapter as a peft folder in the run's log directory after ``fit``.

``lit-bar`` always has it (``configs/defaults.yaml``). At the end of ``fit`` it writes
``<log_dir>/adapter/`` (``adapter_config.json`` + ``adapter_model.safetensors``, the task head
included through ``modules_to_save``) with :func:`lit_bar.export.save_adapter`, from the best
checkpoint when a ``ModelCheckpoint`` monitors a metric, else from the weights at the end of
training. ``<log_dir>`` is ``trainer.log_dir``: the logger's version folder, or the Trainer's
``default_root_dir`` without a logger. Open the folder with plain transformers + peft::

    base = AutoModelForSequenceClassification.from_pretrained("roberta-large", num_labels=2)
    model = PeftModel.from_pretrained(base, "outputs/lightning_logs/version_0/adapter")

or hand it back to lit-bar: ``lit-bar test ... --model.init_args.adapter_path .../adapter``.

A NaN or infinite tensor among those to be written is refused (``NonFiniteError``, nothing written):
a diverged run leaves no adapter (``FiniteCheck`` normally stops it before the end of ``fit``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_bar.algorithms.nonfinite import NonFiniteError, non_finite_names
from lit_bar.algorithms.sharded import is_sharded
from lit_bar.export import restore_frozen_weights, save_adapter, save_merged

__all__ = ["AdapterExport"]


class AdapterExport(Callback):
    """Write ``<log_dir>/<dirname>/`` (peft ``save_pretrained`` format) at the end of ``fit``.

    Modules without a peft ``model`` attribute (full finetuning, the toy problems) are skipped with one
    message, unless ``merged_dirname`` asks for the full model.

    Args:
        dirname: Adapter folder name under the run's log directory.
        merged_dirname: Also write the full model with the adapter merged in (``merge_and_unload``,
            loadable without peft; GPT-2's split q/k/v fused back into ``c_attn``) under this name;
            ``None`` writes no merged model.
    """

    def __init__(self, dirname: str = "adapter", merged_dirname: str | None = None) -> None:
        for name, value in (("dirname", dirname), ("merged_dirname", merged_dirname)):
            if value is not None and (not isinstance(value, str) or not value or Path(value).is_absolute()):
                raise ValueError(f"{name} must be a non-empty relative folder name, got {value!r}")
        self.dirname = dirname
        self.merged_dirname = merged_dirname

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from peft import PeftModel

        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # every rank: log_dir broadcasts
        model = getattr(pl_module, "model", None)
        has_adapter = isinstance(model, PeftModel)
        if not has_adapter and (self.merged_dirname is None or not hasattr(model, "save_pretrained")):
            rank_zero_info(f"AdapterExport: {type(pl_module).__name__} has no peft adapter; nothing exported")
            return
        source = best_checkpoint(trainer)
        if any(is_sharded(p) for p in model.parameters()):
            self._export_sharded(trainer, pl_module, model, log_dir, source)
            return
        if source is None:  # every rank: the weights are the same on all of them
            self._refuse_non_finite(model, "at the end of training")
        if not trainer.is_global_zero:
            return
        base = pl_module.hparams.get("model_name_or_path")
        with checkpoint_weights(pl_module, source):
            if source is not None:
                self._refuse_non_finite(model, f"in the best checkpoint {source}")
            written = []
            if has_adapter:
                written.append(save_adapter(model, log_dir / self.dirname, base))
            if self.merged_dirname is not None:
                tokenizer = getattr(pl_module, "tokenizer", None)
                written.append(save_merged(model, log_dir / self.merged_dirname, tokenizer))
        origin = f"the best checkpoint {source}" if source else "the end of training"
        rank_zero_info(f"AdapterExport: wrote {', '.join(map(str, written))} from {origin}")

    def _export_sharded(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        model: torch.nn.Module,
        log_dir: Path,
        source: str | None,
    ) -> None:
        """FSDP2: every rank gathers the adapter's full tensors (an all-gather per tensor, LoRA-sized),
        from the best checkpoint when there is one; rank 0 writes the same folder as under DDP."""
        from peft import get_peft_model_state_dict

        if self.merged_dirname is not None:
            raise ValueError(
                f"AdapterExport(merged_dirname={self.merged_dirname!r}) under FSDP2: merging needs every "
                "base weight on one process; export the adapter (merged_dirname: null) and merge it "
                "afterwards with lit_bar.export.save_merged on a machine that holds the model"
            )
        with checkpoint_weights(pl_module, source):
            state = {
                k: v.full_tensor() if is_sharded(v) else v
                for k, v in get_peft_model_state_dict(model).items()
            }
        origin = f"the best checkpoint {source}" if source else "the end of training"
        self._refuse_non_finite(model, f"in {origin}", state)
        if trainer.is_global_zero:
            written = save_adapter(
                model, log_dir / self.dirname, pl_module.hparams.get("model_name_or_path"), state
            )
            rank_zero_info(f"AdapterExport: wrote {written} from {origin} (FSDP2: gathered)")

    def _refuse_non_finite(
        self, model: torch.nn.Module, where: str, exported: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Raise before writing anything if a tensor to be exported is NaN/inf (a diverged run)."""
        from peft import PeftModel, get_peft_model_state_dict

        if exported is not None:
            pass
        elif self.merged_dirname is not None or not isinstance(model, PeftModel):
            exported = model.state_dict()  # the merged model's: every weight (the adapter's among them)
        else:
            exported = get_peft_model_state_dict(model)
        bad = non_finite_names(exported)
        if bad:
            more = f", ... ({len(bad) - 3} more)" if len(bad) > 3 else ""
            raise NonFiniteError(
                f"AdapterExport: refusing to export: {len(bad)} tensor(s) are NaN/inf {where} "
                f"({', '.join(bad[:3])}{more}): training diverged; nothing was written"
            )


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint of the first ``ModelCheckpoint`` that monitors a metric, else ``None``."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) is not None and getattr(callback, "best_model_path", ""):
            return callback.best_model_path
    return None


@contextlib.contextmanager
def checkpoint_weights(module: torch.nn.Module, path: str | None) -> Iterator[None]:
    """Hold ``module`` at the weights of the Lightning checkpoint ``path`` for the duration (``None``: as is).

    Only the tensors the checkpoint holds are swapped (frozen base weights, left out of lit-bar's
    checkpoints, stay); the module's own values come back afterwards.
    """
    if path is None:
        yield
        return
    checkpoint: dict[str, Any] = {
        "state_dict": torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    }
    if any(is_sharded(p) for p in module.parameters()):  # FSDP2: every rank loads its slices
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        held = set(checkpoint["state_dict"])
        current = {k: v.full_tensor() for k, v in module.state_dict().items() if k in held}
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(module, checkpoint["state_dict"], options=options)
        try:
            yield
        finally:
            set_model_state_dict(module, current, options=options)
        return
    held = set(checkpoint["state_dict"])
    current = {k: v.detach().clone() for k, v in module.state_dict().items() if k in held}
    restore_frozen_weights(module, checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    try:
        yield
    finally:
        module.load_state_dict(current, strict=False)
