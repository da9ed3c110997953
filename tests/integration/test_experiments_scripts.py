"""Every ``scripts/*.py`` is a thin entry point into :mod:`lit_bar.experiments`, and each one starts as
a subprocess (here, or in the test that runs it for real)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
#: scripts another test runs as a subprocess, for real
RUN_ELSEWHERE = {
    "benchmark_step.py": "tests/integration/test_benchmark_scripts.py",
    "overparam_study.py": "tests/integration/test_benchmark_scripts.py",
    "demo.py": "tests/unit/test_demo_args.py",
}
HELP_HERE = ("gpu_check.py", "plot_balancedness.py", "reproduce_toy.py")
RUN_HERE = ("reproduce.py",)


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_every_script_is_a_docstring_and_a_call_into_lit_bar_experiments() -> None:
    scripts = sorted(path.name for path in SCRIPTS.glob("*.py"))
    assert scripts == sorted([*RUN_ELSEWHERE, *HELP_HERE, *RUN_HERE])  # a new script is started somewhere
    for name in scripts:
        tree = ast.parse((SCRIPTS / name).read_text())
        assert f"python scripts/{name}" in (ast.get_docstring(tree) or ""), f"{name}: no usage line"
        imported = [n.module for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert any(m and m.startswith("lit_bar.experiments") for m in imported), f"{name}: {imported}"
        statements = len(tree.body) - 1  # after the docstring: imports, the path line, the call
        assert statements <= 8, (
            f"{name} has {statements} statements: the logic belongs in lit_bar.experiments"
        )


#: Runs each script as ``__main__`` with ``--help`` in one fresh interpreter (the imports paid once),
#: printing a marker line before each usage.
_HELP_ALL = """
import runpy, sys
for path in sys.argv[1:]:
    print("=== " + path.rsplit("/", 1)[-1], flush=True)
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as stop:
        assert stop.code in (0, None), (path, stop.code)
"""


def test_scripts_start_and_print_their_usage(tmp_path: Path) -> None:
    paths = [str(SCRIPTS / name) for name in HELP_HERE]
    done = subprocess.run(
        [sys.executable, "-c", _HELP_ALL, *paths], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    parts = done.stdout.split("=== ")[1:]
    assert [p.split("\n", 1)[0] for p in parts] == list(HELP_HERE)
    for name, part in zip(HELP_HERE, parts, strict=True):
        assert part.split("\n", 1)[1].startswith(f"usage: {name}"), part[:200]


def test_reproduce_dry_run_from_another_directory(tmp_path: Path) -> None:
    """The grid's commands, from outside the checkout (the task files are the checkout's)."""
    out = tmp_path / "out"
    grid = ["--grid", "offline", "--dry-run", "--out", str(out), "--model", str(tmp_path)]
    done = _script("reproduce.py", *grid, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    commands = [line for line in done.stdout.splitlines() if line.startswith("lit-bar fit")]
    assert len(commands) == 3 * 4 * 3 and not out.exists()
    done = _script("reproduce.py", "--tables-only", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 1 and "reproduce.py: error: no runs.jsonl in" in done.stderr
