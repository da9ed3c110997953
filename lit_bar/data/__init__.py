"""Data modules: one per data family, all built on :class:`TextDataModule`."""

from lit_bar.data.base import TextDataModule
from lit_bar.data.glue import GlueDataModule

__all__ = ["GlueDataModule", "TextDataModule"]
