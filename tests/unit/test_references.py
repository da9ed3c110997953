"""The repository stands alone: docstrings, comments and configs cite only files it ships.

``docs/algorithms.md §n`` must name a section that exists (``## §n`` headings), and nothing cites
``ALGORITHMS.md`` / ``STYLE.md`` (the maintainers' working notes, not shipped) or "seed 00n" (their
file names for the papers).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "algorithms.md"
SOURCES = ["lit_bar", "tests", "configs"]
CITATION = re.compile(r"docs/algorithms\.md\s+((?:§\d+(?:,\s*)?)+)")
UNSHIPPED = re.compile(r"(?<![/\w])(ALGORITHMS\.md|STYLE\.md)|\bseed 00\d\b")


def _files() -> list[Path]:
    here = Path(__file__).resolve()
    return [
        path
        for folder in SOURCES
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in {".py", ".yaml", ".md"} and path.resolve() != here
    ]


def test_every_cited_section_exists() -> None:
    sections = set(re.findall(r"^## §(\d+)\b", DOC.read_text(), flags=re.MULTILINE))
    assert sections == {str(n) for n in range(1, 8)}
    cited, missing = 0, []
    for path in _files():
        for match in CITATION.finditer(path.read_text()):
            for number in re.findall(r"§(\d+)", match.group(1)):
                cited += 1
                if number not in sections:
                    missing.append(f"{path.relative_to(ROOT)}: §{number}")
    assert cited > 20  # the scan sees the citations
    assert not missing, missing


def test_nothing_cites_a_file_the_repository_lacks() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _files()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if UNSHIPPED.search(line)
    ]
    assert not found, "\n".join(found)
