"""What a user reads: label names in the offline configs, the library noise lit-bar filters (and only
that), and the one-line form of jsonargparse's reports (issue 19 items 8 and 10)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import yaml

from lit_bar.cli import quiet
from lit_bar.cli.errors import one_line

ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER_CONFIGS = sorted([*ROOT.glob("configs/offline/*.yaml"), *ROOT.glob("configs/demo/*.yaml")])


@pytest.mark.parametrize("path", CLASSIFIER_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_offline_classifier_configs_name_their_labels(path: Path) -> None:
    """``lit-bar predict`` wrote ``LABEL_0``/``LABEL_1`` (MiniLM's id2label) with these configs."""
    config = yaml.safe_load(path.read_text())
    num_labels = config["data"]["init_args"]["num_labels"]
    names = config["model"]["init_args"].get("label_names")
    assert names is not None and len(names) == num_labels and len(set(names)) == num_labels


def test_offline_configs_are_found() -> None:
    assert len(CLASSIFIER_CONFIGS) >= 4


_REPORT = (
    "\x1b[1mRobertaForSequenceClassification LOAD REPORT\x1b[0m from: /m\n"
    "Key                        | Status     | \n"
    "---------------------------+------------+-\n"
    "lm_head.bias               | UNEXPECTED | \n"
    "classifier.dense.weight    | MISSING    | \n"
    "classifier.out_proj.bias   | MISSING    | \n"
    "\nNotes:\n- MISSING:\tthose params were newly initialized"
)


def _passes(message: str) -> bool:
    record = logging.LogRecord("transformers.modeling_utils", logging.WARNING, "f", 1, message, None, None)
    return quiet.LoadReportFilter().filter(record)


def test_load_report_of_a_fresh_head_is_dropped_and_any_other_kept() -> None:
    assert not _passes(_REPORT)
    encoder = _REPORT.replace("classifier.out_proj.bias ", "encoder.layer.0.query.weight")
    assert _passes(encoder)  # a missing encoder weight is news
    assert _passes(_REPORT.replace("| MISSING    |", "| MISMATCH   |", 1))  # a shape mismatch is news
    assert _passes("some other transformers warning")


def test_install_silences_exactly_the_listed_warnings() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.install()
        for message, category in (
            ("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning),
            ("'set_vital' is deprecated, please do not call", UserWarning),
            ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning),
            ("`is_gradient_checkpointing` is deprecated and will be removed in v6.", UserWarning),
            ("a warning that concerns the user", FutureWarning),
        ):
            warnings.warn(message, category, stacklevel=1)
    assert [(str(w.message)[:20], w.category) for w in seen] == [
        ("`is_gradient_checkpo", UserWarning),  # same text, other category: kept
        ("a warning that conce", FutureWarning),
    ]


def test_lightning_tips_are_dropped_and_its_other_lines_kept(caplog: pytest.LogCaptureFixture) -> None:
    quiet.install()
    quiet.install()  # idempotent
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(type(f).__name__ == "_TipFilter" for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


@pytest.mark.parametrize(
    ("report", "line"),
    [
        (
            'Parser key "model":\n  Does not validate against any of the Union subtypes\n  Subtypes: [A, B]\n'
            "  Errors:\n    - Problem with given class_path 'lit_bar.tasks.glue.SequenceClassifier':\n"
            '        Parser key "perturbation":\n'
            "          Expected a typing.Literal['sam', 'functional']. Got value: bogus\n"
            "    - Expected a <class 'NoneType'>\n  Given value type: <class 'NestedArg'>\n",
            "--model.init_args.perturbation: expected one of 'sam', 'functional'; got 'bogus'",
        ),
        ("Parser key \"trainer.max_steps\":\n  Expected a <class 'int'>. Got value: x", None),
        ("unrecognized arguments: --foo 1", "unrecognized arguments: --foo 1"),
        ("two\n   lines", None),
    ],
    ids=["union-dump", "type", "one-line", "unknown-shape"],
)
def test_one_line(report: str, line: str | None) -> None:
    result = one_line(report)
    assert "\n" not in result
    if line is not None:
        assert result == line
