"""The ``lit-bar`` console script: ``--version`` answers at once; all else goes to :mod:`lit_bar.cli`.

Importing Lightning, transformers and torch takes seconds (9 s on a 2-core machine), and
``lit-bar --version`` needs none of them: it prints the version the full CLI would print
(``lit-bar 0.1.0``) without importing them. Any other command line goes to :func:`lit_bar.cli.main`.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Entry point of the ``lit-bar`` console script."""
    if sys.argv[1:] == ["--version"]:
        from lit_bar import __version__  # lit_bar/__init__ imports nothing heavy until asked

        print(f"lit-bar {__version__}")
        return
    from lit_bar.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
