"""Module paths of lit_bar 0.1 that moved when the package was grouped into layer folders.

``import lit_bar.bar``, a config's ``class_path: lit_bar.schedules.WarmupLinearDecay`` or an old
checkpoint's saved hyperparameters keep working: the old name gives the module at its new path (the
same module object, so ``isinstance`` and monkeypatching see one class) and warns once, naming the new
path (:class:`FutureWarning`: configs are written by end users). The old names will be removed in a
later release; :data:`MOVED` lists them. Standard library only: ``import lit_bar`` stays instant.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

__all__ = ["MOVED", "MovedModuleFinder", "install"]

#: ``{old module path: new module path}``.
MOVED: dict[str, str] = {
    "lit_bar.pairs": "lit_bar.algorithms.pairs",
    "lit_bar.bar": "lit_bar.algorithms.bar",
    "lit_bar.sharded": "lit_bar.algorithms.sharded",
    "lit_bar.batches": "lit_bar.algorithms.batches",
    "lit_bar.nonfinite": "lit_bar.algorithms.nonfinite",
    "lit_bar.syncs": "lit_bar.algorithms.syncs",
    "lit_bar.hub": "lit_bar.io.hub",
    "lit_bar.checkpoint_io": "lit_bar.io.checkpoints",
    "lit_bar.qkv": "lit_bar.io.qkv",
    "lit_bar.resume": "lit_bar.lightning.resume",
    "lit_bar.steps": "lit_bar.lightning.steps",
    "lit_bar.schedules": "lit_bar.lightning.schedules",
    "lit_bar.lightning_compat": "lit_bar.lightning.compat",
    "lit_bar.strategies": "lit_bar.lightning.strategies",
    "lit_bar.sam_module": "lit_bar.lightning.module",
    "lit_bar.sam_front": "lit_bar.lightning.front",
    "lit_bar.sam_resume": "lit_bar.lightning.checkpoint_hooks",
    "lit_bar.cli_errors": "lit_bar.cli.errors",
    "lit_bar.quiet": "lit_bar.cli.quiet",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path of :data:`MOVED` and loads it as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}: import it from there (the old path will be removed)",
            FutureWarning,
            stacklevel=2,  # the import machinery's frames are skipped: this points at the importer
        )
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        """Nothing to run: the module at the new path is already loaded."""


def install() -> None:
    """Put the finder first on :data:`sys.meta_path` (once), so that an old name means the new module
    whatever other finders a stale install or an editable install's path hook would offer; it answers
    only the names of :data:`MOVED` (one dict lookup per import)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
