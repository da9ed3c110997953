"""Data modules: one per data family, all built on :class:`TextDataModule`."""

from lit_bar.data.base import TextDataModule

__all__ = ["TextDataModule"]
