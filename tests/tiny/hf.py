"""Tiny random Hugging Face models, synthetic hub-schema rows, and the ``lit-bar`` arguments of tiny runs.

The hub is unreachable in tests, so each family's test builds a model of the real architecture
from a small config (``RobertaConfig(hidden_size=32, ...)``, OPT, GPT-2), plus a word-level
tokenizer trained on the test rows, and saves both to a folder that the code under test loads
exactly as it would load a downloaded checkpoint. The rows (:func:`sentence_rows`,
:func:`pair_rows`) have the columns and label ids of the hub datasets (SST-2, NLI pairs), written
as JSON Lines (:func:`write_rows`) for the data modules' ``data_dir``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PretrainedConfig, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["lora", "sam", "nbar", "obar", "fsam", "psam"]
TEMPLATE_WORDS = ["It", "was", ".", "?", ",", ":", "great", "terrible", "Yes", "No", "Maybe", "very", "good"]
_NOUNS = ["film", "plot", "cast", "story", "music", "ending"]
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


def tiny_roberta(folder: Path, texts: list[str]) -> Path:
    """A random 2-layer, 32-wide RoBERTa masked LM with a word-level tokenizer covering ``texts``."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    tokenizer = build_tokenizer(texts, extra_words=TEMPLATE_WORDS)
    config = RobertaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=160,
        type_vocab_size=1,
    )
    return save_tiny_model(RobertaForMaskedLM, config, tokenizer, folder)


def sentence_rows(n: int, seed: int, tag: str) -> list[dict]:
    """``n`` SST-2-style rows ``{sentence, label, idx}``; label 1 iff the sentence says ``good``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(_NOUNS), "was", "good" if label else "bad", tag, f"w{i}"]
        rows.append({"sentence": " ".join(words), "label": label, "idx": i})
    return rows


def pair_rows(n: int, seed: int, num_labels: int = 2) -> list[dict]:
    """``n`` NLI-style rows ``{premise, hypothesis, label, idx}``."""
    rng = random.Random(seed)
    return [
        {
            "premise": f"The {rng.choice(_NOUNS)} was good.",
            "hypothesis": f"The {rng.choice(_NOUNS)} was bad",
            "label": i % num_labels,
            "idx": i,
        }
        for i in range(n)
    ]


def write_rows(folder: Path, splits: dict[str, list[dict]]) -> Path:
    """Write each split as ``<folder>/<split>.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def all_texts(splits: dict[str, list[dict]]) -> list[str]:
    """Every string value of every row (what the tiny tokenizer must cover)."""
    return [v for rows in splits.values() for row in rows for v in row.values() if isinstance(v, str)]


def tiny_sst2(base: Path, train: int = 16, validation: int = 8) -> tuple[Path, Path]:
    """A tiny random RoBERTa folder and SST-2-schema train/validation files under ``base``."""
    splits = {"train": sentence_rows(train, 0, "tr"), "validation": sentence_rows(validation, 1, "va")}
    return tiny_roberta(base / "model", all_texts(splits)), write_rows(base / "data", splits)


def glue_cli_args(
    model: Path,
    data: Path,
    method: str,
    out: Path,
    config: str = "roberta-large_sst2.yaml",
    logger: bool = True,
) -> list[str]:
    """``lit-bar`` arguments of a tiny GLUE run: task file + method file + debug.yaml, batch 4, checkpoints
    in ``out``, and (``logger``) a CSV logger under ``out/logs`` (:func:`read_metrics` reads it)."""
    args = [
        "--config", str(ROOT / "configs/glue" / config),
        "--config", str(ROOT / "configs/method" / f"{method}.yaml"),
        "--config", str(ROOT / "configs/debug.yaml"),
        "--model.init_args.model_name_or_path", str(model),
        "--data.init_args.data_dir", str(data),
        "--data.init_args.batch_size", "4",
        "--trainer.default_root_dir", str(out),
        "--trainer.enable_checkpointing", "true",
    ]  # fmt: skip
    if logger:
        csv = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(out / "logs")},
        }
        args += ["--trainer.logger", json.dumps(csv)]
    return args


def read_metrics(log_dir: Path) -> dict[str, float]:
    """The last logged value of each column of every ``metrics.csv`` under ``log_dir``."""
    import csv

    values: dict[str, float] = {}
    for path in sorted(log_dir.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                values.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return values
