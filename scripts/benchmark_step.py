"""Step time and peak memory of LoRA, BAR and SAM variants against a plain loop and the transformers Trainer.

    python scripts/benchmark_step.py --json docs/benchmark.json --markdown docs/benchmark.md
    python scripts/benchmark_step.py --model tiny --lm tiny --rounds 1 --steps 2 --warmup 1   # smoke
    python scripts/benchmark_step.py --strategies ddp fsdp2 --rows   # LoRA, nBAR, SAM on 2 CPU processes

``--help`` lists every option. The rows, the timing and the statistics are in
``lit_bar/experiments/benchmark/`` (a new row goes to ``lit_bar/experiments/methods.py``).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lit_bar, installed or not
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random models and local weights only

from lit_bar.experiments.benchmark.cli import main

if __name__ == "__main__":
    main()
