"""SAM and nBAR under overparameterisation (seed 003): test-accuracy gap to the base optimizer.

    python scripts/overparam_study.py --quick --out outputs/overparam_quick
    python scripts/overparam_study.py --parts mlp --methods base SAM --num-seeds 30 --out outputs/op

``--help`` says what the two sweeps are and what is written; the study is
``lit_bar/experiments/overparam/``; the reading is ``docs/overparam.md``.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lit_bar, installed or not
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local MiniLM weights and data only

from lit_bar.experiments.overparam.cli import main

if __name__ == "__main__":
    main()
