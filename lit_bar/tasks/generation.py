"""``DataToTextGenerator``: GPT-2 + LoRA for data-to-text (WebNLG 2017, paper Table 5; docs/algorithms.md §6).

Training: token-mean cross-entropy with label smoothing 0.1 on the text tokens only (the data
module sets the prompt's labels to -100). Evaluation: beam search (10 beams, length penalty 0.8,
no repeated 4-grams, ≤ 64 new tokens) from the linearised triples, then corpus BLEU over all
references of each input, for all inputs and for the seen / unseen categories apart.

**LoRA on q and v as separate pairs.** GPT-2 computes q, k and v with one fused ``Conv1D``
(``attn.c_attn``, d → 3d); LoRA on it would be one (A, B) pair whose update spans q, k *and* v,
i.e. a different adapter (and a different balancedness) than the paper's. So, with
``split_qkv=True`` (the default), :func:`lit_bar.io.qkv.split_fused_qkv` replaces every ``c_attn`` by
:class:`lit_bar.io.qkv.FusedQKVSplit` — three ``nn.Linear`` named ``q_proj``, ``k_proj``, ``v_proj``
holding the
same weights, whose concatenated output equals ``c_attn``'s — and LoRA targets ``[q_proj, v_proj]``:
two pairs per layer, as microsoft/LoRA's ``MergedLinear(enable_lora=[True, False, True])`` does for
the paper's GPT-2 runs. ``split_qkv=False`` with ``target_modules: [c_attn]`` gives the fused pair.

**BLEU.** ``torchmetrics.text.SacreBLEUScore(tokenize="13a", lowercase=True)``: corpus BLEU-4, no
smoothing, brevity penalty from the closest reference length, n-grams clipped by the maximum count
over an input's references — the formula of the challenge's ``multi-bleu.perl`` run on lower-cased,
tokenised text. The 13a (mteval) tokenisation stands in for the challenge's own tokenisation of the
references, so scores are close to, not identical with, the official ones. Reported on a 0–100 scale.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics.text import SacreBLEUScore
from typing_extensions import override

from lit_bar.algorithms.sharded import gathered
from lit_bar.io.qkv import FusedQKVSplit, split_fused_qkv
from lit_bar.tasks.base import LoRATask
from lit_bar.tasks.checkpoint import UNSAVED_HPARAMS, plain_hparams
from lit_bar.tasks.language_model import load_causal_lm, shifted_lm_loss
from lit_bar.tasks.lora import LoraSettings, apply_lora, as_lora_settings

__all__ = ["SUBSETS", "DataToTextGenerator", "FusedQKVSplit", "split_fused_qkv"]

SUBSETS = ("all", "seen", "unseen")
STAGES = ("val", "test")


class DataToTextGenerator(LoRATask):
    """Causal LM generating text from linearised data, trained by SAM, BAR or plain LoRA.

    Args:
        model_name_or_path: Hub name or local folder of a causal LM (``gpt2-medium``).
        task_info: What the data module decided (linked by ``lit-bar``); informational.
        lora: LoRA settings (paper: r=4, alpha=32, dropout 0.1 on ``[q_proj, v_proj]``); ``None``
            trains every weight.
        split_qkv: Split GPT-2's fused ``c_attn`` into ``q_proj``/``k_proj``/``v_proj`` first, so
            LoRA on q and v makes separate pairs (see the module docstring).
        adapter_path: Restore a trained model from the ``adapter/`` folder ``lit-bar fit`` writes
            (peft format; a stock GPT-2 ``c_attn`` adapter is split into the q/v pairs), e.g. for
            ``lit-bar validate/test/predict``.
        label_smoothing: Label smoothing of the training cross-entropy (paper: 0.1).
        num_beams: Beam width at evaluation (10).
        length_penalty: Beam-search length penalty (0.8).
        no_repeat_ngram_size: Forbid repeating n-grams of this size (4).
        max_new_tokens: Generation budget (64).
        trust_remote_code: Allow the checkpoint's own modelling code to run.
        **kwargs: :class:`lit_bar.SAMModule` arguments (optimizer, lr_scheduler, rho, ...).
    """

    def __init__(
        self,
        model_name_or_path: str,
        task_info: dict[str, Any] | None = None,
        lora: LoraSettings | None = None,
        split_qkv: bool = True,
        adapter_path: str | None = None,
        label_smoothing: float = 0.1,
        num_beams: int = 10,
        length_penalty: float = 0.8,
        no_repeat_ngram_size: int = 4,
        max_new_tokens: int = 64,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=UNSAVED_HPARAMS)
        plain_hparams(self.hparams)  # LoraSettings as a dict, paths as str: weights_only loads them
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if num_beams < 1 or max_new_tokens < 1:
            raise ValueError(
                f"num_beams and max_new_tokens must be >= 1, got {num_beams!r}, {max_new_tokens!r}"
            )
        self.task_info = dict(task_info or {})
        self.label_smoothing = label_smoothing
        self.generation_kwargs = {
            "num_beams": num_beams,
            "length_penalty": length_penalty,
            "no_repeat_ngram_size": no_repeat_ngram_size,
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "early_stopping": True,
        }
        model, self.tokenizer = load_causal_lm(model_name_or_path, trust_remote_code)
        if split_qkv and not split_fused_qkv(model):
            raise ValueError(f"split_qkv=True but {model_name_or_path!r} has no fused c_attn Conv1D to split")
        self.model = apply_lora(model, as_lora_settings(lora)).train()  # from_pretrained: eval mode
        self.restore_adapter(adapter_path)
        self.bleu = nn.ModuleDict(
            {f"{stage}_{subset}": _bleu_metric() for stage in STAGES for subset in SUBSETS}
        )

    @override
    def compute_outputs(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    @override
    def loss_from_outputs(self, outputs: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return shifted_lm_loss(outputs, batch["labels"], self.label_smoothing)

    @override
    def evaluation_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        """Smoothed loss on the first reference, then beam-search texts into BLEU (all / seen / unseen)."""
        loss = self.compute_loss(batch)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=batch["input_ids"].shape[0])
        texts = self.generate_texts(batch["prompt_ids"], batch["prompt_mask"])
        seen = batch["seen"].tolist()
        for subset in SUBSETS:
            keep = [i for i, s in enumerate(seen) if subset == "all" or s == (subset == "seen")]
            if keep:
                self.bleu[f"{stage}_{subset}"].update(
                    [texts[i] for i in keep], [batch["references"][i] for i in keep]
                )
        return loss

    @override
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        """One row per input: the beam-search ``text``."""
        return [{"text": text} for text in self.generate_texts(batch["prompt_ids"], batch["prompt_mask"])]

    @torch.no_grad()
    def generate_texts(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[str]:
        """Beam-search continuations of left-padded prompts, decoded without special tokens."""
        with gathered(self.model):  # FSDP2: generate bypasses the root's forward, which gathers
            sequences = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **self.generation_kwargs,
            )
        texts = self.tokenizer.batch_decode(sequences[:, prompt_ids.shape[1] :], skip_special_tokens=True)
        return [text.strip() for text in texts]

    @override
    def on_evaluation_epoch_end(self, stage: str) -> None:
        for subset in SUBSETS:
            metric = self.bleu[f"{stage}_{subset}"]
            if metric.update_count:
                name = f"{stage}/bleu" if subset == "all" else f"{stage}/bleu_{subset}"
                self.log(name, 100.0 * metric.compute(), prog_bar=subset == "all")
            metric.reset()


def _bleu_metric() -> SacreBLEUScore:
    """Corpus BLEU-4 on lower-cased, 13a-tokenised text over several references (see module docstring)."""
    return SacreBLEUScore(n_gram=4, smooth=False, tokenize="13a", lowercase=True)
