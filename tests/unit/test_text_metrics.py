"""SQuAD F1/EM and multi-reference corpus BLEU, as the task modules compute them, against hand values."""

from __future__ import annotations

import math

import pytest
from torchmetrics.text import SQuAD

from lit_bar.tasks.causal import squad_inputs
from lit_bar.tasks.generation import _bleu_metric


def test_squad_f1_and_exact_match_by_hand():
    # 1: "the Eiffel Tower." normalises (lower case, no punctuation, no articles) to "eiffel tower",
    #    = reference 1: EM 1, F1 1.
    # 2: "in Paris, France" → [in, paris, france] vs best reference [paris]: 1 common token,
    #    precision 1/3, recall 1/1, F1 = 2·(1/3)·1/(1/3 + 1) = 0.5; EM 0.
    answers = ["the Eiffel Tower.", "in Paris, France"]
    references = [["Eiffel Tower", "the tower in Paris"], ["Paris", "the city of lights"]]
    result = SQuAD()(*squad_inputs(answers, references))
    assert float(result["exact_match"]) == pytest.approx(50.0)
    assert float(result["f1"]) == pytest.approx(75.0)


def test_squad_inputs_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 answers for 1 reference"):
        squad_inputs(["a", "b"], [["a"]])


def test_corpus_bleu_with_several_references_by_hand():
    """Corpus BLEU-4 = BP · (Π p_n)^(1/4); counts clipped per input by the max over its references.

    pred 1 "the cat sat on the mat" (6 tokens), refs of 6, 7 ("mat." → "mat ." by 13a) and 1 tokens:
      1-grams 5/6 ("the" twice, at most once per reference), 2-grams 5/5, 3-grams 4/4, 4-grams 3/3;
      closest reference length 6 (not the shortest, 1).
    pred 2 "a dog runs home" (4 tokens), refs of 5 and 8 tokens: every n-gram is in ref 1:
      4/4, 3/3, 2/2, 1/1; closest reference length 5.
    Corpus: p = (9/10, 8/8, 6/6, 4/4); c = 10, r = 11 → BP = exp(1 − 11/10).
    """
    preds = ["The cat sat on the mat", "a dog runs home"]
    references = [
        ["the cat sat on a mat", "A cat sat on the mat.", "cat"],
        ["a dog runs home now", "a dog runs home now and then today"],
    ]
    expected = math.exp(1 - 11 / 10) * (9 / 10) ** 0.25
    metric = _bleu_metric()
    metric.update(preds, references)
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_corpus_bleu_is_not_an_average_of_sentence_bleus():
    """Two updates accumulate counts: the corpus score of both inputs, not the mean of the two scores."""
    preds = ["The cat sat on the mat", "a dog runs home"]
    references = [
        ["the cat sat on a mat", "A cat sat on the mat.", "cat"],
        ["a dog runs home now", "a dog runs home now and then today"],
    ]
    metric = _bleu_metric()
    for pred, refs in zip(preds, references, strict=True):
        metric.update([pred], [refs])
    assert float(metric.compute()) == pytest.approx(math.exp(1 - 11 / 10) * (9 / 10) ** 0.25, abs=1e-6)
