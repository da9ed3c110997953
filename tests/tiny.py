"""Tiny random models and tokenizers saved as local Hugging Face folders, for offline tests.

The hub is unreachable in tests, so each family's test builds a model of the real architecture
from a small config (``RobertaConfig(hidden_size=32, ...)``, OPT, GPT-2), plus a word-level
tokenizer trained on the test rows, and saves both to a folder that the code under test loads
exactly as it would load a downloaded checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PretrainedConfig, PreTrainedTokenizerFast

SPECIAL = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


def build_tokenizer(
    texts: Iterable[str], extra_words: Iterable[str] = (), add_bos_eos: bool = True
) -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word-level tokenizer whose vocabulary is every word of ``texts``.

    Args:
        texts: Text the tokenizer must cover (rows, templates, label words).
        extra_words: More words to add to the vocabulary.
        add_bos_eos: Wrap every encoded text in ``<s> ... </s>`` (RoBERTa style).
    """
    pre = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    words: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL.values())}
    for text in [*texts, *extra_words]:
        for word, _ in pre.pre_tokenize_str(text):
            words.setdefault(word, len(words))
    tokenizer = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre
    if add_bos_eos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL)


def save_tiny_model(
    model_cls: type, config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, folder: Path
) -> Path:
    """Build ``model_cls(config)`` (random weights) and save it with ``tokenizer`` into ``folder``."""
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    model = model_cls(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_opt(folder: Path, texts: Iterable[str]) -> Path:
    """A random 2-layer, 32-wide OPT causal LM (``q_proj``/``v_proj`` as OPT-1.3B); BOS-adding tokenizer."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32,
        max_position_embeddings=512, do_layer_norm_before=True,
    )  # fmt: skip
    return save_tiny_model(OPTForCausalLM, config, build_tokenizer(texts, add_bos_eos=True), folder)


def save_tiny_gpt2(folder: Path, texts: Iterable[str]) -> Path:
    """A random 2-layer, 32-wide GPT-2 LM (fused ``c_attn``), tokenizer without special tokens added."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, n_inner=64)
    return save_tiny_model(GPT2LMHeadModel, config, build_tokenizer(texts, add_bos_eos=False), folder)
