"""Accuracy over seeds: a grid of (task config × method config × seed) through ``lit-bar fit`` + ``test``.

    python scripts/reproduce.py --grid offline --out docs/results/offline           # runs here (CPU)
    python scripts/reproduce.py --grid table1 --dry-run                             # the paper's grids
    python scripts/reproduce.py --tables-only --out docs/results/offline            # re-aggregate
    python scripts/reproduce.py --plot --out docs/results/offline                   # Fig. 3 from the logs

``--help`` says what a grid runs and writes. The grids, the cells' child processes (this script with
``--run-cell SPEC``) and the tables are in ``lit_bar/experiments/reproduce/``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lit_bar, installed or not

from lit_bar.experiments.reproduce.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
