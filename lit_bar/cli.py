"""``lit-bar fit|validate|test|predict``: LightningCLI in subclass mode for model and data.

Compose a task file with a method file::

    lit-bar fit --config configs/<family>/<model>_<task>.yaml --config configs/method/<lora|sam|nbar|obar>.yaml

Shared trainer defaults come from ``configs/defaults.yaml`` (loaded first when present). What the
data decides reaches the model through ``link_arguments``: the model's ``model_name_or_path`` is the
data's ``tokenizer_name_or_path``, and the data module's ``task_info`` (labels, label words, ...)
becomes the model's ``task_info``. Links are skipped for classes without those arguments (the toy
problems, a user's own modules).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

__all__ = ["LitBarCLI", "main"]

_SUBCOMMANDS = ("fit", "validate", "test", "predict")
_MOVED_FLAGS = ("accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")


def _default_config_files() -> list[str]:
    here = Path(__file__).resolve().parents[1] / "configs" / "defaults.yaml"
    return [str(here)] if here.is_file() else []


class LitBarCLI(LightningCLI):
    """LightningCLI with lit_bar's data → model links and SAM-specific checks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer_name_or_path")
        parser.link_arguments("data.task_info", "model.init_args.task_info", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Point Trainer flags that manual optimization refuses to the module's arguments of the same name."""
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        model_args = config.get("model", {}).get("init_args", {}) or {}
        trainer = config.get("trainer", {})
        if "rho" not in model_args:  # not a SAMModule: Lightning's own flags apply
            return
        for flag in _MOVED_FLAGS:
            value = trainer.get(flag)
            if value not in (None, 1, "norm", 0, 0.0):
                raise ValueError(
                    f"--trainer.{flag}={value!r}: lit_bar's SAMModule optimizes manually, which Lightning refuses "
                    f"{flag} for; set it on the module instead: --model.init_args.{flag}={value!r}"
                )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lit-bar`` console script."""
    LitBarCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        # per subcommand: the defaults file holds `trainer:` etc., which only a subcommand's parser accepts
        parser_kwargs={cmd: {"default_config_files": _default_config_files()} for cmd in _SUBCOMMANDS},
        args=args,
    )


if __name__ == "__main__":
    main()
