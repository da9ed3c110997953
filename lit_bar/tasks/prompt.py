"""``PromptMLMClassifier``: prompt-based few-shot classification with a masked LM (family 1, Table 1).

The class scores are the masked LM's logits of the label words at the ``<mask>`` position (LM-BFF;
Gao et al. 2021), trained with cross-entropy over them. Only the mask position goes through the
vocabulary projection: a forward pre-hook on the output embedding keeps that row of each example,
so RoBERTa-large at 256 tokens never builds a ``(batch, 256, 50k)`` logits tensor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from typing_extensions import override

from lit_bar.io.hub import resolve_pretrained
from lit_bar.tasks.base import LoRATask
from lit_bar.tasks.checkpoint import UNSAVED_HPARAMS, plain_hparams
from lit_bar.tasks.glue import MODEL_INPUTS
from lit_bar.tasks.lora import LoraSettings, apply_lora, as_lora_settings
from lit_bar.tasks.metrics import build_metrics, classification_rows

__all__ = ["PromptMLMClassifier"]

_PROMPT_LORA = LoraSettings(r=8, lora_alpha=16, target_modules=["query", "value"])


class PromptMLMClassifier(LoRATask):
    """A masked LM scoring label words at the mask, LoRA-finetuned, with SAM/BAR from the method config.

    Args:
        model_name_or_path: Local model folder or hub name (e.g. ``roberta-large``); needs an MLM head.
        task_info: From :class:`lit_bar.data.PromptFewShotDataModule`: ``label_word_ids``,
            ``mask_token_id`` (and ``label_words``, named in predictions); linked by ``lit-bar``.
        lora: LoRA settings; ``None`` finetunes the whole model.
        adapter_path: Restore a trained model from the ``adapter/`` folder ``lit-bar fit`` writes
            (peft format), e.g. for ``lit-bar validate/test/predict``.
        trust_remote_code: Allow model code from the hub (off by default).
        **kwargs: :class:`lit_bar.SAMModule` arguments (optimizer, lr_scheduler, rho, ...).
    """

    def __init__(
        self,
        model_name_or_path: str,
        task_info: dict[str, Any] | None = None,
        lora: LoraSettings | None = _PROMPT_LORA,
        adapter_path: str | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=UNSAVED_HPARAMS)
        plain_hparams(self.hparams)  # LoraSettings as a dict, paths as str: weights_only loads them
        info = dict(task_info or {})
        if "label_word_ids" not in info or info.get("mask_token_id") is None:
            raise ValueError(
                "PromptMLMClassifier needs task_info with label_word_ids and mask_token_id "
                "(lit-bar links them from PromptFewShotDataModule)"
            )
        self.register_buffer("label_word_ids", torch.tensor(info["label_word_ids"]), persistent=False)
        self.mask_token_id = int(info["mask_token_id"])
        num_labels = len(info["label_word_ids"])
        self.val_metrics = build_metrics(["accuracy"], num_labels)
        self.test_metrics = build_metrics(["accuracy"], num_labels)
        from transformers import AutoModelForMaskedLM

        backbone = AutoModelForMaskedLM.from_pretrained(
            resolve_pretrained(model_name_or_path), trust_remote_code=trust_remote_code
        )
        self.model = apply_lora(backbone, as_lora_settings(lora))
        self.model.train()  # from_pretrained returns eval mode, which Lightning keeps: no dropout otherwise
        self.label_words = list(info["label_words"]) if info.get("label_words") else None
        self.restore_adapter(adapter_path)

    @override
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Check on the host that every row holds exactly one ``<mask>`` (the forward cannot: no sync)."""
        if isinstance(batch, dict) and "input_ids" in batch:
            per_row = (batch["input_ids"] == self.mask_token_id).sum(dim=1)
            if not bool((per_row == 1).all()):
                raise ValueError(
                    f"every prompt needs exactly one mask token (id {self.mask_token_id}); the rows hold "
                    f"{per_row.tolist()} (a template without <mask>, or a prompt cut by max_length?)"
                )
        return batch

    @override
    def compute_outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Label-word logits at the mask, ``(batch, num_labels)``."""
        ids = batch["input_ids"]
        # the <mask> of each row (one per row: checked on the host); indices, not a boolean mask: no sync
        at_mask = (torch.arange(ids.shape[0], device=ids.device), (ids == self.mask_token_id).int().argmax(1))
        head = self.model.get_output_embeddings()
        handle = head.register_forward_pre_hook(lambda _, args: (args[0][at_mask], *args[1:]))
        try:
            logits = self.model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).logits
        finally:
            handle.remove()
        return logits[:, self.label_word_ids]

    @override
    def loss_from_outputs(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy over the label words."""
        return F.cross_entropy(outputs.float(), batch["labels"])

    def model_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and predicted class ids of ``batch``."""
        outputs = self.compute_outputs(batch)
        return self.loss_from_outputs(outputs, batch), outputs.argmax(-1)

    @override
    def evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        loss, preds = self.model_step(batch)
        metrics.update(preds, batch["labels"])
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(preds))
        self.log(f"{stage}/accuracy", metrics["accuracy"], prog_bar=True, batch_size=len(preds))
        return loss

    # ----------------------------------------------------------------- predict and checkpoints
    @override
    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        """One row per example: ``label``, ``label_word`` (when the data names them), ``probabilities``."""
        return classification_rows(self.compute_outputs(batch), self.label_words, "label_word")
