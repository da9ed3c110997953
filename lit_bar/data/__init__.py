"""Data modules: one per data family, all built on :class:`TextDataModule`."""

from lit_bar.data.base import TextDataModule
from lit_bar.data.glue import GlueDataModule
from lit_bar.data.prompt import PromptFewShotDataModule

__all__ = ["GlueDataModule", "PromptFewShotDataModule", "TextDataModule"]
