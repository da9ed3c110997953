"""Tiny RoBERTa folders and synthetic hub-schema rows for the GLUE and prompt-family tests.

Loads ``tests/tiny.py`` by path (``tests/integration/tiny.py`` is a different module also named
``tiny``), so any test tier can ``sys.path.insert(0, tests_dir)`` and import this file.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

_spec = importlib.util.spec_from_file_location("lit_bar_tests_hf_tiny", Path(__file__).with_name("tiny.py"))
hf_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf_tiny)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["lora", "sam", "nbar", "obar", "fsam", "psam"]
TEMPLATE_WORDS = ["It", "was", ".", "?", ",", ":", "great", "terrible", "Yes", "No", "Maybe", "very", "good"]
_NOUNS = ["film", "plot", "cast", "story", "music", "ending"]


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


def tiny_roberta(folder: Path, texts: list[str]) -> Path:
    """A random 2-layer, 32-wide RoBERTa masked LM with a word-level tokenizer covering ``texts``."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    tokenizer = hf_tiny.build_tokenizer(texts, extra_words=TEMPLATE_WORDS)
    config = RobertaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=160,
        type_vocab_size=1,
    )
    return hf_tiny.save_tiny_model(RobertaForMaskedLM, config, tokenizer, folder)


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
