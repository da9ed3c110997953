"""Every third-party module ``lit_bar`` imports (at the top or inside a function) is declared in
``pyproject.toml``'s ``dependencies``, under the distribution that provides it."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "lit_bar").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"lit_bar", "__future__"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_direct_import_is_a_declared_dependency() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared_names = {_canonical(re.split(r"[\[<>=!~ ;]", spec, maxsplit=1)[0]) for spec in declared}
    providers = packages_distributions()
    imported = _imported_top_level_modules()
    assert {"torch", "lightning", "peft", "transformers"} <= imported  # the scan sees the real imports
    missing = {
        module: providers.get(module, [module])
        for module in imported
        if not any(_canonical(dist) in declared_names for dist in providers.get(module, [module]))
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
