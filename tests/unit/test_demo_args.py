"""``scripts/demo.py --data-dir``: any folder, from any directory; a wrong one is one clear line.

Before, the default ``../shared/data/sst2`` worked only beside that folder.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def _demo(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DEMO), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "nowhere", r"--data-dir .*nowhere: no such folder"),
        (lambda d: (d / "train.jsonl").write_text("{}\n") and d, r"no validation split in"),
        (lambda d: d, r"no train or validation split in"),
    ],
    ids=["missing", "no-validation", "empty"],
)
def test_a_wrong_data_dir_is_one_line(tmp_path: Path, make, expected: str) -> None:
    folder = make(tmp_path)
    run = _demo(tmp_path, "--data-dir", str(folder))
    assert run.returncode != 0
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("demo.py: error: --data-dir") and "expected a folder with train" in line
    assert re.search(expected, line), line


def test_relative_data_dir_is_read_from_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    from lit_bar.experiments import demo

    (tmp_path / "sst2").mkdir()
    for split in ("train", "validation"):
        (tmp_path / "sst2" / f"{split}.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert demo.check_data_dir("sst2") == str(tmp_path / "sst2")
