"""``python -m lit_bar.cli fit|validate|test|predict ...``: the ``lit-bar`` command."""

from lit_bar.cli import main

main()
