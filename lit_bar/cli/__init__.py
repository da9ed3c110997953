"""``lit-bar fit|validate|test|predict``: LightningCLI in subclass mode for model and data.

Compose a task file with a method file::

    lit-bar fit --config configs/<family>/<model>_<task>.yaml --config configs/method/<method>.yaml

Shared trainer defaults come from ``configs/defaults.yaml`` (always loaded first). The configs ship
with the package: a ``--config configs/...`` path that does not exist in the working directory is
read from the installed copy (:func:`configs_dir`), so the commands work from any directory.

What the data decides reaches the model through ``link_arguments``: the model's ``model_name_or_path``
is the data's ``tokenizer_name_or_path``, and the data module's ``task_info`` (labels, label words,
...) becomes the model's ``task_info``. Links are skipped for classes without those arguments (the
toy problems, a user's own modules).

The optimizer and LR scheduler are the module's arguments (``--model.init_args.optimizer``):
LightningCLI's top-level ``--optimizer``/``--lr_scheduler``, which would silently replace them, are
refused with a message saying so. lit_bar's tasks, data modules and callbacks are imported here, so
short class names (``--model SequenceClassifier``, ``--trainer.callbacks+ BalancednessCallback``)
resolve.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

# Imported for their classes: jsonargparse resolves short class names among imported subclasses.
import lit_bar.callbacks
import lit_bar.cli.quiet
import lit_bar.data
import lit_bar.tasks
import lit_bar.toy
from lit_bar import __version__
from lit_bar.callbacks.progress import drop_when_bars_are_off
from lit_bar.cli.errors import LitBarArgumentParser
from lit_bar.io.checkpoints import (
    SafeCheckpointIO,
    find_last_checkpoint,
    read_checkpoint,
    run_checkpoint_folders,
)
from lit_bar.lightning.resume import PreemptionCheckpoint, dead_peer_message

__all__ = ["DESCRIPTION", "LitBarCLI", "cli_kwargs", "configs_dir", "main", "resolve_config_path", "run_cli"]

DESCRIPTION = (
    "Sharpness-aware (SAM) and balancedness-aware (nBAR/oBAR) LoRA finetuning with PyTorch Lightning."
)
_SUBCOMMANDS = ("fit", "validate", "test", "predict")
_PACKAGE = Path(__file__).resolve().parents[1]  # lit_bar/, above cli/


def configs_dir() -> Path:
    """The shipped ``configs/`` folder: inside the installed package, else the checkout's top-level one."""
    for candidate in (_PACKAGE / "configs", _PACKAGE.parent / "configs"):
        if (candidate / "defaults.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"lit_bar's configs/ folder is missing: looked in {_PACKAGE} and {_PACKAGE.parent}"
    )


def resolve_config_path(path: str) -> str:
    """``path`` itself if it exists; else a ``configs/...`` path read from the shipped configs."""
    given = Path(path)
    if given.exists() or not given.parts or given.parts[0] != "configs":
        return path
    shipped = configs_dir().joinpath(*given.parts[1:])
    return str(shipped) if shipped.is_file() else path


def _with_shipped_configs(args: list[str]) -> list[str]:
    """Rewrite every ``--config PATH`` / ``--config=PATH`` / ``-c PATH`` with :func:`resolve_config_path`."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg in ("--config", "-c") and i + 1 < len(out):
            out[i + 1] = resolve_config_path(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config_path(arg.split("=", 1)[1])
    return out


class _RefusedFlag(argparse.ArgumentTypeError, ValueError):
    """argparse shows this message for a command-line flag, jsonargparse for a config-file key."""


def _refuse_top_level(flag: str, model_key: str) -> Any:
    """A parser type that rejects LightningCLI's top-level ``--optimizer``/``--lr_scheduler``."""

    def refuse(value: Any) -> Any:
        raise _RefusedFlag(
            f"--{flag} is not a lit-bar option: the {flag.replace('_', ' ')} is the module's argument, "
            f"so set it with --model.init_args.{model_key} (e.g. --model.init_args.{model_key} "
            f"{'SGD --model.init_args.optimizer.lr 0.1' if flag == 'optimizer' else 'StepLR'}), "
            f"or under model.init_args.{model_key} in a config file; got {value!r}"
        )

    refuse.__name__ = f"{flag}_refused"
    return refuse


_STEP_CHECKPOINT_WARNING = "Using ModelCheckpoint with manual optimization and every_n_train_steps"


class LitBarCLI(LightningCLI):
    """LightningCLI with lit_bar's data → model links, no top-level optimizer, and ``temp_root_dir``."""

    #: the trainer built last, weakly (main() asks its DDP launcher which rank died)
    last_trainer: Callable[[], Trainer | None] = staticmethod(lambda: None)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer_name_or_path")
        parser.link_arguments("data.task_info", "model.init_args.task_info", apply_on="instantiate")
        parser.add_argument(
            "--temp_root_dir",
            type=bool,
            default=False,
            help="Write the run's files (config.yaml, checkpoints, exports) into a fresh temporary "
            "folder instead of the working directory when trainer.default_root_dir is not set "
            "(configs/debug.yaml sets this).",
        )
        for flag, key in (("optimizer", "optimizer"), ("lr_scheduler", "lr_scheduler")):
            parser.add_argument(
                f"--{flag}", type=_refuse_top_level(flag, key), default=None, help=argparse.SUPPRESS
            )

    @override
    def _parse_ckpt_path(self) -> None:
        """Before Lightning reads ``--ckpt_path`` (for the model's hyperparameters): ``last`` becomes
        the run's newest checkpoint, and the file is checked (:func:`read_checkpoint`), so that a
        missing, empty, truncated, foreign or corrupt file stops the run with one line."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if ckpt_path == "last":
            ckpt_path = str(find_last_checkpoint(run_checkpoint_folders(config.trainer)))
            config.ckpt_path = ckpt_path
            rank_zero_info(f"lit-bar: --ckpt_path last: {ckpt_path} (the newest checkpoint of this run)")
        if ckpt_path and ckpt_path not in ("best", "hpc") and "://" not in str(ckpt_path):
            read_checkpoint(ckpt_path)
        super()._parse_ckpt_path()

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's trainer, saving and loading checkpoints through :class:`SafeCheckpointIO` (unless
        the run set a checkpoint plugin of its own) and saving one when SIGTERM stops a fit."""
        trainer = super().instantiate_trainer(**kwargs)
        LitBarCLI.last_trainer = weakref.ref(trainer)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        if not any(isinstance(cb, PreemptionCheckpoint) for cb in trainer.callbacks):
            trainer.callbacks.append(PreemptionCheckpoint())
        if not getattr(self.model, "automatic_optimization", True):
            # ModelCheckpoint(every_n_train_steps=...) warns that under manual optimization the file
            # holds the weights after the optimizer step: for lit_bar's modules that is exactly the
            # state an exact resume needs (tests/integration/test_resume*.py), so the warning misleads
            warnings.filterwarnings("ignore", message=_STEP_CHECKPOINT_WARNING, category=UserWarning)
        return trainer

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        drop_when_bars_are_off(config.trainer)
        if config.get("temp_root_dir") and config.trainer.get("default_root_dir") is None:
            config.trainer.default_root_dir = tempfile.mkdtemp(prefix="lit-bar-")
            rank_zero_info(
                f"lit-bar: temp_root_dir: this run's files go to {config.trainer.default_root_dir}"
            )


def _class_help(subcommand: str) -> str:
    """The end of ``lit-bar <subcommand> --help``: where the options of the model, data and LoRA are."""
    return (
        f"The options of a model, data or callback class: lit-bar {subcommand} --model.help "
        f"SequenceClassifier (or any task class), --data.help GlueDataModule. Every field of peft's "
        f"LoraConfig, with peft's help: lit-bar {subcommand} --model SequenceClassifier "
        f"--model.lora.help LoraSettings."
    )


def cli_kwargs(run: bool = True) -> dict:
    """The keyword arguments ``lit-bar`` gives ``LitBarCLI`` (``run=False``: no subcommand, as in tests)."""
    defaults = {"default_config_files": [str(configs_dir() / "defaults.yaml")]}
    main_parser = {"prog": "lit-bar", "description": DESCRIPTION, "version": __version__}
    return dict(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # one place for the optimizer: the module's
        parser_class=LitBarArgumentParser,  # a bad option or config file: one error line
        save_config_kwargs={"overwrite": True},
        # per subcommand: the defaults file holds `trainer:` etc., which only a subcommand's parser accepts
        parser_kwargs={
            **main_parser,
            **{cmd: {**defaults, "epilog": _class_help(cmd)} for cmd in _SUBCOMMANDS},
        }
        if run
        else {**main_parser, **defaults},
        run=run,
    )


def _root_cause(err: BaseException) -> BaseException:
    """The innermost ``ValueError`` of a chain: jsonargparse wraps a class's own error in a union dump."""
    while isinstance(err.__cause__, ValueError):
        err = err.__cause__
    return err


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lit-bar`` console script.

    A ``ValueError`` (lit_bar's way of rejecting a config value, also when raised while a class is
    built) ends the run with one ``lit-bar: error:`` line and exit status 2 instead of a traceback;
    ``LIT_BAR_TRACEBACK=1`` shows the traceback. Called with ``args`` (from Python or tests), errors
    propagate unchanged.
    """
    if args is not None or os.environ.get("LIT_BAR_TRACEBACK"):
        run_cli(args)
        return
    try:
        run_cli(args)
    except ValueError as err:
        message = " ".join(str(_root_cause(err)).split())
        print(f"lit-bar: error: {message}", file=sys.stderr)
        print("(set LIT_BAR_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:  # PreemptionCheckpoint saved and said where
        raise SystemExit(143) from None
    except RuntimeError as err:  # a collective failed because another rank died: say which, in one line
        trainer = LitBarCLI.last_trainer()
        message = dead_peer_message(err, trainer.strategy.launcher if trainer is not None else None)
        if message is None:
            raise
        print(f"lit-bar: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def run_cli(args: list[str] | None = None) -> LitBarCLI:
    """Build and run ``LitBarCLI`` as ``lit-bar`` does (``args=None``: ``sys.argv``); return it.

    ``--config configs/...`` paths missing from the working directory are read from the shipped
    configs (:func:`resolve_config_path`). Errors propagate (``main`` turns them into one line).
    Library messages that do not concern the run are filtered by their text (:mod:`lit_bar.cli.quiet`).
    """
    lit_bar.cli.quiet.install()
    if args is None:  # the console script: LightningCLI reads sys.argv itself
        sys.argv[1:] = _with_shipped_configs(sys.argv[1:])
        return LitBarCLI(**cli_kwargs())
    return LitBarCLI(**cli_kwargs(), args=_with_shipped_configs(args))
