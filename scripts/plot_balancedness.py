"""The paper's Fig. 3 from a reproduce.py grid's logs: |balancedness| over training, per method and per layer.

    python scripts/plot_balancedness.py --out docs/results/offline [--task sst2-32shot] [--png PATH]
    python scripts/reproduce.py --plot --out docs/results/offline          # the same, default task

``--help`` says what is read and drawn; the figure is
``lit_bar/experiments/reproduce/balancedness_figure.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lit_bar, installed or not

from lit_bar.experiments.reproduce.balancedness_figure import main

if __name__ == "__main__":
    main()
