"""``PromptFewShotDataModule``: LM-BFF prompts for masked-LM classification, k shots per class (family 1).

A template is a string over the row's columns with three markers for the tokenizer's own special
tokens — ``<s>`` (BOS, or CLS), ``</s>`` (EOS, or SEP), ``<mask>`` (exactly once) — and named
transforms in the ``{column:transform}`` slot (``lit_bar.data.templates.TRANSFORMS`` plus
``strip_last``, LM-BFF's "sentence without its final character")::

    SST-2  "<s>{sentence} It was<mask>.</s>"                        label_words [" terrible", " great"]
    MNLI   "<s>{premise:strip_last}?<mask>, {hypothesis:lower_first_char}</s>"   [" Yes", " Maybe", " No"]
    TREC   "<s><mask>: {text}</s>"

Label word ``i`` stands for class ``i``; each must start with a space and be one token. Sampling
(Gao et al. 2021, Malladi et al. 2023): per class, one seeded shuffle of the train split; its first
k rows train and the next k are the dev set, so they never overlap, and the test set (the original
validation or test split, at most 1000 rows drawn with seed 42) never meets either.
"""

from __future__ import annotations

import random
import re
import string
from typing import Any

from typing_extensions import override

from lit_bar.data.base import TextDataModule
from lit_bar.data.checks import check_class_ids
from lit_bar.data.sampling import sample_k_per_class
from lit_bar.data.templates import TRANSFORMS

__all__ = ["PromptFewShotDataModule", "parse_prompt"]

PROMPT_TRANSFORMS = {**TRANSFORMS, "strip_last": lambda text: text[:-1]}
_MARKERS = {"<s>": "bos", "</s>": "eos", "<mask>": "mask"}
_MARKER_RE = re.compile("(" + "|".join(map(re.escape, _MARKERS)) + ")")
TEST_SEED = 42


def parse_prompt(template: str) -> list[tuple[str, str, str]]:
    """Split ``template`` into ``(kind, value, transform)`` pieces: ``special`` / ``text`` / ``field``.

    A space that ends a text piece moves to the field after it, so a BPE tokenizer encodes the
    field's first word with its leading space (``", {hypothesis}"``).

    Raises:
        ValueError: no ``<mask>`` or more than one; a bad placeholder or unknown transform.
    """
    if template.count("<mask>") != 1:
        raise ValueError(f"template {template!r} must hold the mask marker <mask> exactly once")
    pieces: list[tuple[str, str, str]] = []
    for part in _MARKER_RE.split(template):
        if part in _MARKERS:
            pieces.append(("special", _MARKERS[part], ""))
            continue
        for literal, name, spec, conversion in string.Formatter().parse(part):
            if literal:
                pieces.append(("text", literal, ""))
            if name is None:
                continue
            if not name.isidentifier() or conversion or (spec and spec not in PROMPT_TRANSFORMS):
                raise ValueError(
                    f"template {template!r}: bad placeholder {{{name}:{spec}}}; write {{column}} or "
                    f"{{column:transform}} with a transform in {sorted(PROMPT_TRANSFORMS)}"
                )
            prefix = ""
            if pieces and pieces[-1][0] == "text" and pieces[-1][1] != pieces[-1][1].rstrip():
                kind, text, _ = pieces.pop()
                prefix = text[len(text.rstrip()) :]
                if text.rstrip():
                    pieces.append((kind, text.rstrip(), ""))
            pieces.append(("field", name, f"{spec}|{prefix}"))
    return pieces


class PromptFewShotDataModule(TextDataModule):
    """k-shot train/dev sets encoded with an LM-BFF template (for ``PromptMLMClassifier``).

    Args:
        template: Prompt with ``<s>``, ``</s>``, ``<mask>`` markers and ``{column[:transform]}`` fields.
        label_words: One word per class, in label-id order, each with a leading space and one token.
        label_column: Column with the class id.
        k: Examples per class for train, and again for dev; ``None`` trains on the whole train split
            and validates on the test split.
        train_split: Split train and dev are sampled from.
        test_split: Split the test set is drawn from (SST-2 ``validation``: GLUE test is unlabelled).
        test_size: Cap on the test set (seed 42); ``None`` keeps every row.
        **kwargs: :class:`lit_bar.data.TextDataModule` arguments; ``seed`` is the k-shot seed.
    """

    def __init__(
        self,
        template: str,
        label_words: list[str],
        label_column: str = "label",
        k: int | None = 16,
        train_split: str = "train",
        test_split: str = "validation",
        test_size: int | None = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pieces = parse_prompt(template)
        if len(label_words) < 2:
            raise ValueError(f"give one label word per class (at least two), got {label_words!r}")
        for word in label_words:
            if not word.startswith(" ") or not word.strip():
                raise ValueError(f"label word {word!r} must be a word with a leading space, e.g. ' great'")
        if k is not None and k < 1:
            raise ValueError(f"k must be a positive int or None, got {k!r}")
        if test_split == train_split:
            raise ValueError(f"test_split {test_split!r} is the train split: the test rows would leak")
        self.template = template
        self.label_words = list(label_words)
        self.label_column = label_column
        self.k = k
        self.train_split = train_split
        self.test_split = test_split
        self.test_size = test_size
        self._label_word_ids: list[int] | None = None

    @property
    @override
    def task_info(self) -> dict[str, Any]:
        """Label words and their ids, the mask token id and the number of classes (tokenizer-checked)."""
        return {
            "label_word_ids": self.label_word_ids(),
            "label_words": list(self.label_words),
            "mask_token_id": self.tokenizer.mask_token_id,
            "num_labels": len(self.label_words),
        }

    def label_word_ids(self) -> list[int]:
        """One token id per label word; ``ValueError`` naming a word that is not one token."""
        if self._label_word_ids is None:
            if self.tokenizer.mask_token_id is None:
                raise ValueError(f"tokenizer {self.tokenizer_name_or_path!r} has no mask token")
            ids = []
            for word in self.label_words:
                tokens = self.tokenizer(word, add_special_tokens=False)["input_ids"]
                if len(tokens) != 1:
                    pieces = self.tokenizer.convert_ids_to_tokens(tokens)
                    raise ValueError(f"label word {word!r} is {len(tokens)} tokens {pieces}, not one")
                ids.append(tokens[0])
            self._label_word_ids = ids
        return self._label_word_ids

    @override
    def required_columns(self) -> list[str]:
        fields = [value for kind, value, _ in self.pieces if kind == "field"]
        return [*dict.fromkeys(fields), self.label_column]

    @override
    def select_splits(self, raw: Any) -> dict[str, Any]:
        for name in (self.train_split, self.test_split):
            if name not in raw:
                raise ValueError(f"split {name!r} not found; the data has splits {sorted(raw)}")
            self.check_columns(raw[name], name)
        self.label_word_ids()  # fail on a bad label word before any training
        train = self._labelled(raw[self.train_split], self.train_split)
        test = self._labelled(raw[self.test_split], self.test_split)
        if self.test_size is not None and len(test) > self.test_size:
            test = test.select(sorted(random.Random(TEST_SEED).sample(range(len(test)), self.test_size)))
        if self.k is None:
            return {"train": train, "validation": test, "test": test}
        train_rows, dev_rows = sample_k_per_class(
            train[self.label_column], self.k, self.seed, len(self.label_words)
        )
        return {"train": train.select(train_rows), "validation": train.select(dev_rows), "test": test}

    def _labelled(self, dataset: Any, split: str) -> Any:
        """Rows whose label is a class id (SNLI marks rows without a gold label -1); a label that is
        no integer at all (a string, ``null``) is an error naming its row."""
        check_class_ids(dataset[self.label_column], None, self.split_source(split), self.label_column)
        n = len(self.label_words)
        kept = dataset.filter(lambda y: 0 <= y < n, input_columns=self.label_column)
        if len(kept) == 0:
            raise ValueError(f"no row has a label in 0..{n - 1} in column {self.label_column!r}")
        return kept

    @override
    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        tokenizer = self.tokenizer
        special = {
            "bos": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
            "eos": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
            "mask": tokenizer.mask_token_id,
        }
        parts: list[list[int]] = []
        fields: list[int] = []
        for kind, value, spec in self.pieces:
            if kind == "special":
                parts.append([special[value]])
                continue
            text = value
            if kind == "field":
                transform, prefix = spec.split("|", 1)
                text = prefix + (
                    PROMPT_TRANSFORMS[transform](str(row[value])) if transform else str(row[value])
                )
                fields.append(len(parts))
            parts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        _truncate(parts, fields, self.max_length)
        input_ids = [i for part in parts for i in part]
        return {
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "labels": int(row[self.label_column]),
        }


def _truncate(parts: list[list[int]], fields: list[int], max_length: int) -> None:
    """Cut tokens off the end of the longest field until the prompt fits (markers are never cut)."""
    excess = sum(map(len, parts)) - max_length
    while excess > 0 and fields:
        longest = max(fields, key=lambda i: len(parts[i]))
        if not parts[longest]:
            break
        parts[longest].pop()
        excess -= 1
