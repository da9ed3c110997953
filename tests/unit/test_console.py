"""``lit-bar --version`` answers without importing torch or Lightning (issue 19 item 10: it took 9 s)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = (
    "import sys; sys.argv = ['lit-bar', '--version']; from lit_bar.console import main; main(); "
    "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'jsonargparse') if m in sys.modules))"
)


def test_version_imports_nothing_heavy_and_matches_the_full_cli(capsys: pytest.CaptureFixture) -> None:
    run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    version, heavy = run.stdout.splitlines()
    assert heavy == "[]", run.stdout  # before: the console script imported lit_bar.cli (Lightning, torch)
    from lit_bar.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])  # what jsonargparse prints for the full CLI
    assert version == capsys.readouterr().out.strip()


def test_the_console_script_is_the_fast_entry_point() -> None:
    entry = re.search(r'^lit-bar = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert entry and entry[1] == "lit_bar.console:main"


def test_lazy_package_names_still_resolve() -> None:
    import lit_bar
    from lit_bar.algorithms.bar import apply_bar
    from lit_bar.algorithms.pairs import FactorPair

    assert lit_bar.apply_bar is apply_bar and lit_bar.FactorPair is FactorPair
    assert set(lit_bar.__all__) <= set(dir(lit_bar)) | set(lit_bar._LAZY) | {
        "SAMModule", "BalancednessCallback", "BalancednessMonitor"
    }  # fmt: skip
    with pytest.raises(AttributeError):
        lit_bar.no_such_name  # noqa: B018
