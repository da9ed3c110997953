"""Data modules: one per data family, all built on :class:`TextDataModule`."""

from lit_bar.data.base import TextDataModule
from lit_bar.data.causal import CandidateDataModule
from lit_bar.data.glue import GlueDataModule
from lit_bar.data.prompt import PromptFewShotDataModule
from lit_bar.data.webnlg import WebNLGDataModule

__all__ = [
    "CandidateDataModule",
    "GlueDataModule",
    "PromptFewShotDataModule",
    "TextDataModule",
    "WebNLGDataModule",
]
