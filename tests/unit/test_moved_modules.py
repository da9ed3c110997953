"""The module paths of 0.1 that moved into the layer folders still import: the same module, a warning."""

from __future__ import annotations

import importlib
import pickle
import sys

import pytest

from lit_bar._moved import MOVED


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_path_gives_the_new_module_and_names_it(
    old: str, new: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(FutureWarning, match=rf"^{old} moved to {new}: import it from there"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == new  # the one module object: classes compare and patch as one


def test_old_class_paths_and_pickles_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    """What configs and saved hyperparameters hold: ``class_path: lit_bar.schedules.X``, pickled names."""
    from lit_bar.lightning.schedules import WarmupLinearDecay

    monkeypatch.delitem(sys.modules, "lit_bar.schedules", raising=False)
    with pytest.warns(FutureWarning):
        assert importlib.import_module("lit_bar.schedules").WarmupLinearDecay is WarmupLinearDecay
    old_pickle = pickle.dumps(WarmupLinearDecay, protocol=0).replace(
        b"lit_bar.lightning.schedules", b"lit_bar.schedules"
    )
    assert b"lit_bar.schedules" in old_pickle and pickle.loads(old_pickle) is WarmupLinearDecay


def test_unknown_names_are_not_taken_over() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"lit_bar\.no_such_module"):
        importlib.import_module("lit_bar.no_such_module")
