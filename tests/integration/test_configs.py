"""Every shipped YAML parses against the code: task files × method files, and each standalone file.

Parsing resolves every ``class_path`` and checks every ``init_args`` key and type against the
signatures (jsonargparse), applies the parse-time links, and stops before instantiation, so no
model or dataset is loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_bar.cli import LitBarCLI, cli_kwargs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TASK_FAMILIES = ("fewshot", "glue", "opt", "gpt2", "offline", "offline_tuned")
TASKS = sorted(p for family in TASK_FAMILIES for p in (CONFIGS / family).glob("*.yaml"))
METHODS = sorted((CONFIGS / "method").glob("*.yaml"))
STANDALONE = [*TASKS, *sorted((CONFIGS / "toy").glob("*.yaml")), *sorted((CONFIGS / "demo").glob("*.yaml"))]
COMPOSE_ONLY = [*METHODS, CONFIGS / "debug.yaml", CONFIGS / "defaults.yaml"]


class ParseOnly(LitBarCLI):
    """Parse and validate, but build nothing."""

    def instantiate_classes(self) -> None:
        pass


@pytest.fixture(scope="module")
def parse():
    """Build the CLI's parser once (the slow part) and parse many config combinations with it."""
    parser = ParseOnly(**cli_kwargs(run=False), args=["--config", str(TASKS[0])]).parser

    def run(*files: Path):
        return parser.parse_args([arg for f in files for arg in ("--config", str(f))])

    return run


def test_every_yaml_is_covered_and_counted():
    """A new YAML must land in one of the lists above (and so be parsed below)."""
    everything = sorted(CONFIGS.rglob("*.yaml"))
    assert sorted([*STANDALONE, *COMPOSE_ONLY]) == everything
    assert (len(TASKS), len(METHODS), len(everything)) == (27, 8, 40)


@pytest.mark.parametrize("method", METHODS, ids=lambda p: p.stem)
@pytest.mark.parametrize("task", TASKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_task_file_composes_with_method_file(parse, task, method):
    config = parse(task, method)
    model_args = config.model.init_args
    assert model_args.rho >= 0
    assert config.data.init_args.tokenizer_name_or_path == model_args.model_name_or_path  # the link
    if method.stem in ("nbar", "obar"):
        modes = [
            cb.init_args.mode
            for cb in config.trainer.callbacks
            if cb.class_path.endswith("BalancednessCallback")
        ]
        assert modes == [method.stem]
    if method.stem == "fsam":
        assert model_args.perturbation == "functional"
    if method.stem == "psam":
        assert model_args.precondition == "adam"


@pytest.mark.parametrize("path", STANDALONE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_standalone_file_parses_alone_and_with_debug(parse, path):
    parse(path)
    config = parse(path, CONFIGS / "debug.yaml")
    assert config.trainer.max_steps == 4


@pytest.mark.parametrize("path", STANDALONE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_file_opens_with_its_command(path):
    header = [line for line in path.read_text().splitlines()[:3] if line.startswith("#")]
    command = f"# lit-bar fit --config {path.relative_to(CONFIGS.parent)}"
    assert any(line.startswith(command) for line in header), f"{path.name} does not open with {command!r}"
