"""Every test runs in the same Hugging Face environment, whatever the caller's shell holds.

huggingface_hub, datasets and transformers read their ``HF_*`` / ``HUGGINGFACE_*`` /
``TRANSFORMERS_*`` variables once, when imported, into module constants (``HF_HUB_OFFLINE``,
``HF_HUB_CACHE``, ``datasets.config.HF_DATASETS_CACHE``, ...). So the autouse fixture below does
both, for every test: it removes those variables from ``os.environ`` (subprocesses inherit the
clean environment), points ``HF_HOME`` at a fresh folder of its own, and sets each of those
modules' constants to the value a clean import with that ``HF_HOME`` gives. A test that wants
offline mode or a cache says so itself (``monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)``).
``tests/unit/test_test_isolation.py`` runs the hub-sensitive tests with the variables set.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets.config
import huggingface_hub.constants
import pytest
import transformers.utils.hub

_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")
#: modules whose constants come from the environment at import, in dependency order
_ENV_MODULES: tuple[ModuleType, ...] = (huggingface_hub.constants, datasets.config, transformers.utils.hub)
_SENTINEL = "/lit-bar-test-hf-home"  # stands for each test's own HF_HOME in the computed constants
_PLAIN = (str, bool, int, float, type(None), Path)


def _hf_variables() -> list[str]:
    return [name for name in os.environ if name.startswith(_PREFIXES)]


def _fresh_copy(module: ModuleType) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{module.__name__}__clean", module.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    return fresh


def _clean_constants() -> list[tuple[ModuleType, str, Any]]:
    """``(module, name, value)`` for each plain constant whose clean-environment value (with
    ``HF_HOME=_SENTINEL``) differs from the imported one, or holds the sentinel path."""
    saved = {name: os.environ.pop(name) for name in _hf_variables()}
    os.environ["HF_HOME"] = _SENTINEL
    patched: list[tuple[ModuleType, str, Any]] = []
    originals: list[tuple[ModuleType, str, Any]] = []
    try:
        for module in _ENV_MODULES:
            fresh, again = _fresh_copy(module), _fresh_copy(module)  # its imports see the cleaned modules
            for name, value in vars(fresh).items():
                if not name.isupper() or not isinstance(value, _PLAIN) or getattr(again, name) != value:
                    continue  # not a constant, or not from the environment (a random session id)
                live = getattr(module, name, None)
                if live != value or _SENTINEL in str(value):
                    patched.append((module, name, value))
                    originals.append((module, name, live))
                    setattr(module, name, value)
    finally:
        for module, name, value in reversed(originals):
            setattr(module, name, value)
        del os.environ["HF_HOME"]
        os.environ.update(saved)
    return patched


_CONSTANTS = _clean_constants()
_NUMBERS = count()


@pytest.fixture(autouse=True)
def isolated_hugging_face(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """No ``HF_*`` / ``HUGGINGFACE_*`` / ``TRANSFORMERS_*`` variable from the caller, and a fresh
    ``HF_HOME`` (not created until something writes there); yields that folder."""
    home = tmp_path_factory.getbasetemp() / "hf-homes" / f"t{next(_NUMBERS)}"
    for name in _hf_variables():
        monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HOME", str(home))
    for module, name, value in _CONSTANTS:
        if isinstance(value, str | Path) and _SENTINEL in str(value):
            value = type(value)(str(value).replace(_SENTINEL, str(home)))
        monkeypatch.setattr(module, name, value)
    yield home
