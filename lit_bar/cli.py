"""``lit-bar fit|validate|test|predict``: LightningCLI in subclass mode for model and data.

Compose a task file with a method file::

    lit-bar fit --config configs/<family>/<model>_<task>.yaml --config configs/method/<method>.yaml

Shared trainer defaults come from ``configs/defaults.yaml`` (loaded first when present). What the
data decides reaches the model through ``link_arguments``: the model's ``model_name_or_path`` is the
data's ``tokenizer_name_or_path``, and the data module's ``task_info`` (labels, label words, ...)
becomes the model's ``task_info``. Links are skipped for classes without those arguments (the toy
problems, a user's own modules).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

__all__ = ["LitBarCLI", "cli_kwargs", "main"]

_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _default_config_files() -> list[str]:
    here = Path(__file__).resolve().parents[1] / "configs" / "defaults.yaml"
    return [str(here)] if here.is_file() else []


class LitBarCLI(LightningCLI):
    """LightningCLI with lit_bar's data → model links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer_name_or_path")
        parser.link_arguments("data.task_info", "model.init_args.task_info", apply_on="instantiate")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lit-bar`` console script.

    A ``ValueError`` (lit_bar's way of rejecting a config value) ends the run with its message and
    exit status 2 instead of a traceback; ``LIT_BAR_TRACEBACK=1`` shows the traceback. Called with
    ``args`` (from Python or tests), errors propagate unchanged.
    """
    if args is not None or os.environ.get("LIT_BAR_TRACEBACK"):
        _run(args)
        return
    try:
        _run(args)
    except ValueError as err:
        print(f"lit-bar: error: {err}", file=sys.stderr)
        print("(set LIT_BAR_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def cli_kwargs(run: bool = True) -> dict:
    """The keyword arguments ``lit-bar`` gives ``LitBarCLI`` (``run=False``: no subcommand, as in tests)."""
    defaults = {"default_config_files": _default_config_files()}
    return dict(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        # per subcommand: the defaults file holds `trainer:` etc., which only a subcommand's parser accepts
        parser_kwargs={cmd: defaults for cmd in _SUBCOMMANDS} if run else defaults,
        run=run,
    )


def _run(args: list[str] | None) -> None:
    LitBarCLI(**cli_kwargs(), args=args)


if __name__ == "__main__":
    main()
