"""``WebNLGDataModule``: linearised RDF triples → text (WebNLG 2017, paper Table 5; docs/algorithms.md §6).

Rows are one reference text each: ``category``, ``eid``, ``triples`` (a list of
``"subject | predicate | object"``), ``text`` — the schema of ``../shared/data/webnlg``. The input
is linearised as ``"s : p : o | s : p : o"`` (entity underscores → spaces, quotes dropped), and the
training sequence is ``input ⊕ separator + text ⊕ EOS`` with labels -100 on the input (loss on the
text only).

Evaluation groups the rows of one input: ``eid`` alone does not identify an input (the challenge
numbers entries per category and triple count, so train has 6,940 inputs but 323 distinct ``eid``
values), so the key is ``(category, eid, triples)``; the local test split has 1,862 inputs with
4,928 references. An input is *seen* when its category occurs in the train split (or in
``seen_categories``): on the 2017 test set that leaves exactly Artist, Athlete, CelestialBody,
MeanOfTransportation and Politician unseen. The hub's nested ``web_nlg`` schema (``lex``,
``modified_triple_sets``) is not read: convert it to these columns first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from typing_extensions import override

from lit_bar.data.base import IGNORE_INDEX, TextDataModule, pad_sequences

__all__ = ["WebNLGDataModule", "group_references", "linearise_triples"]

COLUMNS = ["category", "eid", "triples", "text"]


def linearise_triples(triples: Sequence[str]) -> str:
    """``["A_b | p | "C d""]`` → ``"A b : p : C d"``, triples joined by ``" | "``."""
    parts = []
    for triple in triples:
        pieces = [p.strip().replace("_", " ").replace('"', "").strip() for p in triple.split(" | ", 2)]
        if len(pieces) != 3:
            raise ValueError(f"triple {triple!r} is not 'subject | predicate | object'")
        parts.append(" : ".join(pieces))
    return " | ".join(parts)


def group_references(rows: Any) -> list[dict[str, Any]]:
    """One entry per input ``(category, eid, triples)``, in first-seen order, ``text`` = all references."""
    groups: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["category"], str(row["eid"]), tuple(row["triples"]))
        entry = groups.setdefault(key, {**{c: row[c] for c in COLUMNS}, "text": []})
        entry["text"].append(row["text"])
    return list(groups.values())


class WebNLGDataModule(TextDataModule):
    """WebNLG rows → GPT-2 training sequences and grouped multi-reference evaluation inputs.

    Args:
        separator: Text between the linearised input and the target text (part of the target).
        seen_categories: Categories counted as seen; ``None`` takes those of the train split.
        **kwargs: :class:`TextDataModule` arguments (``data_dir``, batch sizes, ``max_length``, ...).
    """

    def __init__(self, separator: str = " ", seen_categories: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.separator = separator
        self.seen_categories = set(seen_categories) if seen_categories is not None else None

    @override
    def required_columns(self) -> list[str]:
        return list(COLUMNS)

    @override
    def select_splits(self, raw: Any) -> dict[str, Any]:
        import datasets

        if "train" not in raw:
            raise ValueError(f"WebNLG needs a train split; available: {sorted(raw)}")
        for split in raw:
            self.check_columns(raw[split], split)
        if self.seen_categories is None:
            self.seen_categories = set(raw["train"]["category"])
        out: dict[str, Any] = {"train": raw["train"]}
        for role in ("validation", "test"):
            if role in raw:
                out[role] = datasets.Dataset.from_list(group_references(raw[role]))
        return out

    @property
    @override
    def task_info(self) -> dict[str, Any]:
        return {"seen_categories": sorted(self.seen_categories or [])}

    # ----------------------------------------------------------------- encoding
    def encode_pair(self, triples: Sequence[str], text: str) -> tuple[list[int], list[int]]:
        """``input ⊕ separator + text ⊕ EOS`` ids (input cut on the left to fit) and their labels."""
        target = self.tokenizer(self.separator + text, add_special_tokens=False)["input_ids"]
        target = [*target[: self.max_length - 2], self.tokenizer.eos_token_id]
        context = self.prompt_ids(triples, self.max_length - len(target))
        return context + target, [IGNORE_INDEX] * len(context) + target

    def prompt_ids(self, triples: Sequence[str], budget: int | None = None) -> list[int]:
        """Token ids of the linearised input (no special tokens), its last ``budget`` tokens."""
        ids = self.tokenizer(linearise_triples(triples), add_special_tokens=False)["input_ids"]
        return ids[-max(budget or self.max_length, 1) :]

    @override
    def collate_train(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """One sequence per (input, reference) row."""
        pairs = [self.encode_pair(row["triples"], row["text"]) for row in rows]
        return self.lm_batch([p[0] for p in pairs], [p[1] for p in pairs])

    @override
    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Grouped inputs: the first reference (for the loss), left-padded prompts, all references, seen."""
        batch = self.collate_train([{**row, "text": row["text"][0]} for row in rows])
        prompts = [self.prompt_ids(row["triples"]) for row in rows]
        batch["prompt_ids"] = pad_sequences(prompts, self.tokenizer.pad_token_id, left=True)
        batch["prompt_mask"] = pad_sequences([[1] * len(p) for p in prompts], 0, left=True)
        batch["references"] = [list(row["text"]) for row in rows]
        batch["seen"] = torch.tensor([row["category"] in self.seen_categories for row in rows])
        return batch
