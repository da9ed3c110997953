"""Reproduce the paper's toy figures (Fig. 1 and 2): balancedness of SGD, SAM, nBAR and oBAR on NOP/OP.

    python scripts/reproduce_toy.py --out /tmp/toy_out            # full run (η=1e-3, ρ=0.5, 2500 steps)
    python scripts/reproduce_toy.py --out /tmp/toy_quick --quick  # smoke run, ~1-2 minutes on CPU

``--help`` lists what is written; the runs and the figures are ``lit_bar/experiments/toy_figures.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lit_bar, installed or not

from lit_bar.experiments.toy_figures import main

if __name__ == "__main__":
    main()
