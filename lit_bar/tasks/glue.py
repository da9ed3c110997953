"""``SequenceClassifier``: GLUE classification/regression with LoRA (family 3, the paper's Table 4).

``AutoModelForSequenceClassification`` wrapped with peft LoRA on ``query``/``value`` (the names in
BERT and RoBERTa attention) and the classification head ``classifier`` trained in full (peft
``modules_to_save``; both BERT's Linear and RoBERTa's two-layer head are named ``classifier``).
The SAM / plain step is :class:`lit_bar.SAMModule`'s; this module supplies the logits
(``compute_outputs``), the loss (cross-entropy, or MSE for one output) and the metrics.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from typing_extensions import override

from lit_bar.io.hub import resolve_pretrained
from lit_bar.tasks.base import LoRATask
from lit_bar.tasks.checkpoint import UNSAVED_HPARAMS, plain_hparams
from lit_bar.tasks.lora import LoraSettings, apply_lora, as_lora_settings, load_adapter_weights
from lit_bar.tasks.metrics import build_metrics, classification_rows, default_metrics

__all__ = ["MODEL_INPUTS", "SequenceClassifier"]

#: Batch keys passed to the transformer; everything else (``labels``) is the module's.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

_GLUE_LORA = LoraSettings(
    r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]
)


class SequenceClassifier(LoRATask):
    """A pretrained encoder + classification head, LoRA-finetuned, with SAM/BAR from the method config.

    Args:
        model_name_or_path: Local model folder or hub name (e.g. ``roberta-large``).
        task_info: From the data module (``num_labels``, ``test_splits``); linked by ``lit-bar``.
        lora: LoRA settings; ``None`` finetunes the whole model.
        init_adapter: Start *training* from these LoRA weights (a peft adapter folder or a lit-bar
            ``.ckpt``), head excluded: microsoft/LoRA starts MRPC, RTE and STS-B from the MNLI adapter.
        adapter_path: Restore a *trained* model from the ``adapter/`` folder ``lit-bar fit`` writes
            (peft format), head included, e.g. for ``lit-bar validate/test/predict``.
        label_names: Class names by label id, written beside the ids by ``lit-bar predict``; ``None``
            takes ``task_info["label_names"]``, else the backbone config's ``id2label``.
        metrics: Metric names (``accuracy``, ``f1``, ``matthews``; ``pearson``, ``spearman`` for
            regression); the first is the one to monitor. ``None``: accuracy, or Pearson/Spearman.
        trust_remote_code: Allow model code from the hub (off by default).
        **kwargs: :class:`lit_bar.SAMModule` arguments (optimizer, lr_scheduler, rho, ...).
    """

    def __init__(
        self,
        model_name_or_path: str,
        task_info: dict[str, Any] | None = None,
        lora: LoraSettings | None = _GLUE_LORA,
        init_adapter: str | None = None,
        adapter_path: str | None = None,
        label_names: list[str] | None = None,
        metrics: list[str] | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=UNSAVED_HPARAMS)
        plain_hparams(self.hparams)  # LoraSettings as a dict, paths as str: weights_only loads them
        lora = as_lora_settings(lora)
        if init_adapter is not None and adapter_path is not None:
            raise ValueError(
                "give init_adapter (LoRA weights to start training from, head excluded) or adapter_path "
                "(a trained adapter folder, head included), not both"
            )
        info = dict(task_info or {})
        self.num_labels = int(info.get("num_labels", 2))
        self.test_splits = list(info.get("test_splits", ["test"]))
        self.metric_names = list(metrics) if metrics is not None else default_metrics(self.num_labels)
        self.val_metrics = build_metrics(self.metric_names, self.num_labels)
        self.test_metrics = torch.nn.ModuleList(
            [build_metrics(self.metric_names, self.num_labels) for _ in self.test_splits]
        )
        self.model = apply_lora(self._load_backbone(model_name_or_path, trust_remote_code), lora)
        self.model.train()  # from_pretrained returns eval mode, which Lightning keeps: no dropout otherwise
        if init_adapter is not None:
            if lora is None:
                raise ValueError("init_adapter needs LoRA (lora: null finetunes the whole model)")
            load_adapter_weights(self.model, init_adapter)
        self.label_names = self._label_names(label_names or info.get("label_names"))
        self.restore_adapter(adapter_path)

    def _load_backbone(self, name: str, trust_remote_code: bool) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            resolve_pretrained(name),
            num_labels=self.num_labels,
            problem_type="regression" if self.num_labels == 1 else "single_label_classification",
            trust_remote_code=trust_remote_code,
        )

    def _label_names(self, names: list[str] | None) -> list[str] | None:
        """Class names by id (checked against ``num_labels``); ``None`` for regression."""
        if self.num_labels == 1:
            return None
        if names is None:
            id2label = self.model.config.id2label
            return [str(id2label.get(i, i)) for i in range(self.num_labels)]
        if len(names) != self.num_labels:
            raise ValueError(
                f"label_names {list(names)!r} has {len(names)} names for num_labels={self.num_labels}"
            )
        return [str(name) for name in names]

    # ----------------------------------------------------------------- what SAMModule asks for
    @override
    def compute_outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(batch, num_labels)``; scores ``(batch,)`` for regression."""
        logits = self.model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).logits
        return logits.squeeze(-1) if self.num_labels == 1 else logits

    @override
    def loss_from_outputs(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy over the classes, or mean squared error for regression."""
        if self.num_labels == 1:
            return F.mse_loss(outputs.float(), batch["labels"].float())
        return F.cross_entropy(outputs.float(), batch["labels"])

    # ----------------------------------------------------------------- evaluation
    def model_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and predictions (class ids, or scores for regression) of ``batch``."""
        outputs = self.compute_outputs(batch)
        preds = outputs.float() if self.num_labels == 1 else outputs.argmax(-1)
        return self.loss_from_outputs(outputs, batch), preds

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, preds = self.model_step(batch)
        self.val_metrics.update(preds, batch["labels"])
        self.log("val/loss", loss, prog_bar=True, batch_size=len(preds))
        self.log_dict(
            {f"val/{k}": m for k, m in self.val_metrics.items()}, prog_bar=True, batch_size=len(preds)
        )
        return loss

    @override
    def test_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> torch.Tensor:
        loss, preds = self.model_step(batch)
        metrics = self.test_metrics[dataloader_idx]
        metrics.update(preds, batch["labels"])
        prefix = "test/" if len(self.test_splits) == 1 else f"test/{self.test_splits[dataloader_idx]}/"
        size = len(preds)
        self.log(f"{prefix}loss", loss, batch_size=size, add_dataloader_idx=False)
        self.log_dict(
            {f"{prefix}{k}": m for k, m in metrics.items()}, batch_size=size, add_dataloader_idx=False
        )
        return loss

    # ----------------------------------------------------------------- predict and checkpoints
    @override
    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        """One row per example: ``label``, ``label_name``, ``probabilities``; ``value`` for regression."""
        outputs = self.compute_outputs(batch)
        if self.num_labels == 1:
            return [{"value": value} for value in outputs.float().tolist()]
        return classification_rows(outputs, self.label_names, "label_name")
