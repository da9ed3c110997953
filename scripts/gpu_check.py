"""GPU check: host syncs by source, the fp16 skip step, and a step-time / peak-memory table.

    python scripts/gpu_check.py                  # one GPU: roberta-large-sized random model, < 5 minutes
    python scripts/gpu_check.py --size tiny      # anywhere (the test runs this on CPU)

Exit status 1 if lit_bar issued a sync or the skip check failed. What it runs and how syncs are
charged: ``lit_bar/experiments/gpu_check.py``.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lit_bar, installed or not
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a random model saved to a temporary folder only

from lit_bar.experiments.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
