"""Library messages that do not concern a ``lit-bar`` user, silenced one by one by their exact text.

A ``lit-bar fit`` printed about 40 lines of messages from the libraries underneath that say
nothing about the user's run: deprecations inside transformers, torchdata and Lightning (calls
between those libraries, which a user cannot change), Lightning's advertisements for its cloud
products, and transformers' load report for the classification head that every finetuning run
starts fresh. :func:`install` (called by ``lit-bar`` only, never on ``import lit_bar``) filters
exactly those, by message; every other warning and log record shows as before, and so does a load
report that lists anything but the fresh head and the dropped pretraining head.
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["FRESH_HEADS", "LoadReportFilter", "install"]

#: (message regex, category): deprecations raised inside one library by another's call.
WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # transformers 5 deprecated the property that peft's get_peft_model reads
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    # torchdata's StatefulDataLoader calls torch.set_vital, deprecated in torch 2.13
    (r"'set_vital' is deprecated, please do not call", UserWarning),
    # Lightning 2.6's _pytree builds torch's LeafSpec, deprecated in torch 2.13
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)

#: Lightning's rank-zero info lines that advertise its cloud products.
_TIPS = ("💡 Tip: For seamless cloud",)

#: Parameter prefixes of heads a finetuning run trains from scratch (MISSING in the load report) or
#: drops (a pretraining head, UNEXPECTED): the report of a load that differs only there says nothing.
FRESH_HEADS = {
    "MISSING": ("classifier.", "score.", "pre_classifier.", "qa_outputs."),
    "UNEXPECTED": ("lm_head.", "cls.", "pooler.", "vocab_", "predictions."),
}
_ROW = re.compile(r"^(?P<key>\S+)\s*\|\s*(?P<status>[A-Z_]+)\s*\|")


class LoadReportFilter(logging.Filter):
    """Drops transformers' ``LOAD REPORT`` when every row is a fresh task head or a dropped
    pretraining head (:data:`FRESH_HEADS`); any other row (a mismatched shape, a missing encoder
    weight) keeps the whole report."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if "LOAD REPORT" not in message:
            return True
        rows = [m for m in map(_ROW.match, message.splitlines()) if m and m["status"] != "Status"]
        expected = all(m["key"].startswith(FRESH_HEADS.get(m["status"], ("\0",))) for m in rows)
        return not (rows and expected)


class _TipFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIPS)


def _add_once(logger: logging.Logger, kind: type[logging.Filter]) -> None:
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


def install() -> None:
    """Filter the messages above for the rest of the process (idempotent)."""
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    _add_once(logging.getLogger("lightning.pytorch.utilities.rank_zero"), _TipFilter)
    _add_once(logging.getLogger("transformers.modeling_utils"), LoadReportFilter)
