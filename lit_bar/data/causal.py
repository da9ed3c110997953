"""``CandidateDataModule``: prompts and answer candidates for causal-LM scoring and generation (MeZO).

One class serves SST-2, CB, RTE, COPA, ReCoRD and SQuAD; a dataset is a config (docs/algorithms.md §6)::

    prompt      = template(row)                          "{sentence} It was"
    candidates  = candidates                             [" terrible", " great"]     (label words)
                | row[c] for c in candidate_columns      [choice1, choice2]          (COPA)
                | row[candidate_list_column]             entities                    (ReCoRD)
                | row[answer_column][0]                  the first answer            (SQuAD, generation)
    continuation = candidate_template(row, candidate)    " {query}", with placeholder → candidate
    gold        = row[label_column] | candidates found in row[answer_column]

Sequences are ``prompt ⊕ continuation`` token ids (prompt trailing spaces move to the front of the
continuation, so BPE sees " word"); ``labels`` mark the continuation's tokens. Prompts longer than
``max_length`` lose tokens on the left. Rows are sampled per seed by :func:`sample_roles`: train and
validation from ``train_split``, disjoint; test from ``test_split``. Batches are described in
:mod:`lit_bar.tasks.causal`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from typing_extensions import override

from lit_bar.data.base import IGNORE_INDEX, TextDataModule, pad_sequences
from lit_bar.data.checks import check_class_ids
from lit_bar.data.sampling import sample_roles
from lit_bar.data.templates import Template

__all__ = ["CandidateDataModule"]


@dataclass
class _Example:
    prompt: str
    continuations: list[str]
    gold: list[bool]
    references: list[str]
    options: list[str]  # the candidates themselves (continuations are their formatted texts)


class CandidateDataModule(TextDataModule):
    """Prompt + candidates (or reference answers) from rows in the hub schema, for :class:`CausalLMTask`.

    Args:
        template: Prompt format string over row columns, e.g. ``"{sentence} It was"``; transforms
            such as ``{premise:no_period}`` (see :mod:`lit_bar.data.templates`).
        candidates: Fixed candidate strings indexed by ``label_column`` (label words, ``" great"``).
        candidate_columns: Columns holding each row's candidates, indexed by ``label_column`` (COPA).
        candidate_list_column: Column holding a list of candidates; gold = those in ``answer_column``
            (ReCoRD's ``entities``).
        answer_column: Column of reference answers: a list of strings or a dict with a ``text`` list
            (SQuAD's ``answers``); needed for ``candidate_list_column`` and ``generation``.
        label_column: Gold candidate index with ``candidates`` / ``candidate_columns``.
        candidate_template: Format of the continuation; ``{candidate}`` is the candidate, other
            fields are columns (``"{candidate:lower_first_word}"``, ReCoRD ``" {query}"``).
        placeholder: Text in the continuation replaced by the candidate (ReCoRD ``"@placeholder"``).
        value_maps: Per column, value → text before formatting (COPA ``question``: cause → " because ").
        replacements: Literal replacements in the formatted prompt (ReCoRD ``"@highlight\\n" → "- "``).
        objective: Training batches: ``"candidates"`` (every candidate, cross-entropy over their
            scores) or ``"lm"`` (the gold continuation only, LM loss).
        generation: Evaluate by generating answers (SQuAD) instead of scoring candidates.
        num_train: Training rows (MeZO 1000; CB 150, COPA 300); ``None``: all of a source split.
        num_validation: Validation rows, drawn from ``train_split`` too (500; CB and COPA 100).
        num_test: Test rows (1000; CB 56, COPA 100).
        train_split: Source split of train and validation rows.
        test_split: Source split of test rows (MeZO: the original validation split).
        **kwargs: :class:`TextDataModule` arguments (dataset, data_dir, batch sizes, max_length, seed, ...).
    """

    def __init__(
        self,
        template: str,
        candidates: list[str] | None = None,
        candidate_columns: list[str] | None = None,
        candidate_list_column: str | None = None,
        answer_column: str | None = None,
        label_column: str = "label",
        candidate_template: str = "{candidate}",
        placeholder: str | None = None,
        value_maps: dict[str, dict[str, str]] | None = None,
        replacements: dict[str, str] | None = None,
        objective: Literal["candidates", "lm"] = "candidates",
        generation: bool = False,
        num_train: int | None = 1000,
        num_validation: int | None = 500,
        num_test: int | None = 1000,
        train_split: str = "train",
        test_split: str = "validation",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        sources = [x for x in (candidates, candidate_columns, candidate_list_column) if x]
        if len(sources) != (0 if generation else 1):
            raise ValueError(
                "give exactly one of candidates, candidate_columns, candidate_list_column "
                "(none with generation=True, which generates the answer_column's answers)"
            )
        if (generation or candidate_list_column) and not answer_column:
            raise ValueError(
                "generation and candidate_list_column need answer_column (the reference answers)"
            )
        if objective not in ("candidates", "lm"):
            raise ValueError(f"objective must be 'candidates' or 'lm', got {objective!r}")
        if generation and objective != "lm":
            raise ValueError("generation=True trains with objective='lm' (LM loss on the answer)")
        self.template = Template(template, value_maps)
        self.continuation = Template(candidate_template, value_maps)
        self.candidates = list(candidates) if candidates else None
        self.candidate_columns = list(candidate_columns) if candidate_columns else None
        self.candidate_list_column = candidate_list_column
        self.answer_column = answer_column
        self.label_column = label_column
        self.placeholder = placeholder
        self.replacements = dict(replacements or {})
        self.objective = objective
        self.generation = generation
        self.sizes = {"train": num_train, "validation": num_validation, "test": num_test}
        self.sources = {"train": train_split, "validation": train_split, "test": test_split}
        self._prefix_ids: list[int] | None = None

    # ----------------------------------------------------------------- TextDataModule's hooks
    @override
    def required_columns(self) -> list[str]:
        columns = [*self.template.fields, *(f for f in self.continuation.fields if f != "candidate")]
        columns += self.candidate_columns or []
        columns += [c for c in (self.candidate_list_column, self.answer_column) if c]
        if self.candidates or self.candidate_columns:
            columns.append(self.label_column)
        return list(dict.fromkeys(columns))

    @override
    def select_splits(self, raw: Any) -> dict[str, Any]:
        labelled = bool(self.candidates or self.candidate_columns)
        for source in dict.fromkeys(self.sources.values()):
            if source in raw:
                self.check_columns(raw[source], source)
                if labelled:  # integers, else an error naming the row; the range is checked below
                    check_class_ids(
                        raw[source][self.label_column], None, self.split_source(source), self.label_column
                    )
        chosen = sample_roles(raw, self.sources, self.sizes, self.seed)
        if self.candidates or self.candidate_columns:
            count = len(self.candidates or self.candidate_columns)
            for role, data in chosen.items():
                bad = sorted(
                    {v for v in data[self.label_column] if not (isinstance(v, int) and 0 <= v < count)}
                )
                if bad:
                    raise ValueError(
                        f"{role} rows have {self.label_column!r} values {bad[:5]} outside 0..{count - 1} "
                        f"(unlabelled rows, e.g. a hub test split, cannot be used: set test_split)"
                    )
        return chosen

    @property
    @override
    def task_info(self) -> dict[str, Any]:
        return {"objective": self.objective, "generation": self.generation, "candidates": self.candidates}

    @override
    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Evaluation batches: every candidate (scoring) or the prompts and references (generation)."""
        examples = [self.example(row) for row in rows]
        if self.generation:
            return self._generation_batch(examples)
        return self._scoring_batch(examples)

    @override
    def collate_train(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Training batches: every candidate (``objective="candidates"``) or the gold one (``"lm"``)."""
        examples = [self.example(row) for row in rows]
        if self.objective == "candidates":
            return self._scoring_batch(examples)
        return self._lm_batch(examples)

    # ----------------------------------------------------------------- rows → examples
    def example(self, row: dict[str, Any]) -> _Example:
        """The prompt, continuations, which are gold, and reference answers of one row."""
        prompt = self.template(row)
        for old, new in self.replacements.items():
            prompt = prompt.replace(old, new)
        references = _answers(row[self.answer_column]) if self.answer_column else []
        if self.generation:
            if not references:
                raise ValueError(f"a row has no reference answer in {self.answer_column!r}: {row}")
            options, gold = references[:1], [True]
        elif self.candidate_list_column:
            options = list(dict.fromkeys(row[self.candidate_list_column]))
            gold = [option in references for option in options]
        else:
            options = self.candidates or [row[c] for c in self.candidate_columns]
            gold = [i == row[self.label_column] for i in range(len(options))]
        continuations = [self._continuation(row, o) for o in options]
        return _Example(prompt, continuations, gold, references, list(options))

    def _continuation(self, row: dict[str, Any], candidate: str) -> str:
        text = self.continuation(row, candidate=candidate)
        return text.replace(self.placeholder, candidate) if self.placeholder else text

    # ----------------------------------------------------------------- examples → token ids
    def _prefix(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (OPT: ``</s>``; GPT-2: none)."""
        if self._prefix_ids is None:
            full = self.tokenizer("a")["input_ids"]
            plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
            starts = [i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain]
            self._prefix_ids = list(full[: starts[0]]) if starts else []
        return self._prefix_ids

    def encode_pair(self, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
        """``prompt ⊕ continuation`` ids (≤ max_length, prompt cut on the left) and their labels."""
        if prompt.endswith(" "):
            prompt = prompt.rstrip(" ")
            continuation = continuation if continuation.startswith(" ") else " " + continuation
        target = self.tokenizer(continuation, add_special_tokens=False)["input_ids"][: self.max_length - 1]
        context = self._prompt_ids(prompt, self.max_length - len(target))
        return context + target, [IGNORE_INDEX] * len(context) + target

    def _prompt_ids(self, prompt: str, budget: int) -> list[int]:
        prefix = self._prefix()
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        keep = max(budget - len(prefix), 1)
        return prefix + ids[-keep:]

    def _scoring_batch(self, examples: list[_Example]) -> dict[str, Any]:
        sequences, labels, example_index, candidate_index, gold = [], [], [], [], []
        for b, ex in enumerate(examples):
            for c, text in enumerate(ex.continuations):
                ids, target = self.encode_pair(ex.prompt, text)
                sequences.append(ids)
                labels.append(target)
                example_index.append(b)
                candidate_index.append(c)
                gold.append(ex.gold[c])
        batch = self.lm_batch(sequences, labels)
        batch["example_index"] = torch.tensor(example_index)
        batch["candidate_index"] = torch.tensor(candidate_index)
        batch["gold"] = torch.tensor(gold, dtype=torch.bool)
        batch["candidates"] = [ex.options for ex in examples]  # the raw candidate strings (predictions)
        batch["label"] = torch.tensor(
            [ex.gold.index(True) if any(ex.gold) else IGNORE_INDEX for ex in examples]
        )
        return batch

    def _lm_batch(self, examples: list[_Example]) -> dict[str, Any]:
        pairs = []
        for ex in examples:
            if not any(ex.gold):
                raise ValueError(f"no gold candidate for the prompt {ex.prompt[:80]!r}: cannot train on it")
            pairs.append(self.encode_pair(ex.prompt, ex.continuations[ex.gold.index(True)]))
        return self.lm_batch([p[0] for p in pairs], [p[1] for p in pairs])

    def _generation_batch(self, examples: list[_Example]) -> dict[str, Any]:
        batch = self._lm_batch(examples)
        prompts = [self._prompt_ids(ex.prompt.rstrip(" "), self.max_length) for ex in examples]
        batch["prompt_ids"] = pad_sequences(prompts, self.tokenizer.pad_token_id, left=True)
        batch["prompt_mask"] = pad_sequences([[1] * len(p) for p in prompts], 0, left=True)
        batch["references"] = [ex.references for ex in examples]
        return batch


def _answers(value: Any) -> list[str]:
    """Reference answers from a list of strings or a SQuAD-style ``{"text": [...]}`` dict."""
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in value]
