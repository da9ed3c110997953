"""Pieces shared by the causal-LM task modules: loading, per-sequence log-probabilities, LM loss, decoding.

All functions work on right-padded training batches whose ``labels`` are the input ids with ``-100``
on every position that is not a target (prompt, padding), the Hugging Face convention: the logit at
position t predicts the token at t + 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lit_bar.io.hub import resolve_pretrained

__all__ = [
    "decode_continuations",
    "load_causal_lm",
    "mean_target_logprobs",
    "shifted_lm_loss",
    "stop_token_ids",
    "target_index",
]

IGNORE_INDEX = -100


def load_causal_lm(
    model_name_or_path: str, trust_remote_code: bool = False, model_kwargs: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, Any]:
    """``AutoModelForCausalLM`` and its tokenizer from a local folder or the hub (fails fast offline).

    Args:
        model_name_or_path: Hub name or local folder.
        trust_remote_code: Allow the checkpoint's own modelling code to run.
        model_kwargs: More ``from_pretrained`` arguments (e.g. ``{"gguf_file": "model.gguf"}``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_pretrained(model_name_or_path, "model")
    extra = dict(model_kwargs or {})
    tokenizer_extra = {k: v for k, v in extra.items() if k == "gguf_file"}
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **tokenizer_extra)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
    if tokenizer.pad_token_id is None:  # GPT-2/OPT-style tokenizers without a pad token pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def target_index(labels: torch.Tensor) -> torch.Tensor:
    """``(K, 2)`` (row, position) of every logit that predicts a target token (``labels != -100``).

    Its size depends on the labels' values, so on a GPU tensor it makes the host wait: build it
    where the labels still live on the host, before the batch moves (``CausalLMTask`` does, in
    ``on_before_batch_transfer``), and pass it to :func:`mean_target_logprobs`.

    Raises:
        ValueError: a row without target tokens (an empty candidate, or one cut by ``max_length``).
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a candidate has no target tokens (empty after tokenisation or cut by max_length)")
    return mask.nonzero()


def mean_target_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean log-probability of each row's target tokens (``labels != -100``), in float32.

    Only the target positions' logits are normalised, so memory is O(targets × vocabulary). With
    ``index`` given, nothing here depends on tensor values on the host: no sync.

    Args:
        logits: ``(N, L, V)`` next-token logits.
        labels: ``(N, L)`` target ids, ``-100`` elsewhere.
        index: :func:`target_index` of ``labels``, built on the host; ``None`` builds it here (a host
            sync when ``labels`` is on a GPU).

    Returns:
        ``(N,)`` scores; a row without targets raises ``ValueError`` (when ``index`` is built here).
    """
    if index is None:
        index = target_index(labels)
    rows, positions = index.to(logits.device).unbind(1)
    picked = logits[rows, positions].float()  # (K, V): the positions that predict a target token
    targets = labels[rows, positions + 1]
    token_logprobs = picked.gather(1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(picked, dim=1)
    sums = torch.zeros(labels.shape[0], device=logits.device).index_add(0, rows, token_logprobs)
    return sums / (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def shifted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Token-mean cross-entropy of next-token predictions on the target positions (float32)."""
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def stop_token_ids(tokenizer: Any, stop_at_newline: bool) -> list[int]:
    """EOS, plus the newline token when ``"\\n"`` is one token of its own (as in GPT-2/OPT BPE)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if stop_at_newline:
        newline = tokenizer.encode("\n", add_special_tokens=False)
        if len(newline) == 1 and newline[0] != tokenizer.unk_token_id:
            ids.append(newline[0])
    return ids


def decode_continuations(
    tokenizer: Any, sequences: torch.Tensor, prompt_length: int, stop_at_newline: bool = False
) -> list[str]:
    """Decode the generated part of each sequence; cut at the first newline when asked; strip."""
    texts = tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
    if stop_at_newline:
        texts = [text.split("\n", 1)[0] for text in texts]
    return [text.strip() for text in texts]
