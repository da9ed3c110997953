"""GLUE family through ``lit-bar fit`` then ``lit-bar test`` on a tiny random RoBERTa, all four methods."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import (
    METHODS,
    all_texts,
    glue_cli_args,
    pair_rows,
    read_metrics,
    tiny_roberta,
    tiny_sst2,
    write_rows,
)

from lit_bar.cli import main


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_sst2(tmp_path_factory.mktemp("glue"))


@pytest.mark.parametrize("method", METHODS)
def test_fit_then_test(sst2_like: tuple[Path, Path], tmp_path: Path, method: str) -> None:
    model, data = sst2_like
    main(["fit", *glue_cli_args(model, data, method, tmp_path)])
    fitted = read_metrics(tmp_path / "logs")
    assert torch.isfinite(torch.tensor(fitted["train/loss"]))
    assert 0.0 <= fitted["val/accuracy"] <= 1.0
    if method in ("nbar", "obar"):
        assert fitted["bar/pairs_plus"] + fitted["bar/pairs_minus"] == 4  # query+value × 2 layers
    (ckpt,) = (tmp_path / "logs").rglob("*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert any("lora_B" in k for k in state) and any("classifier" in k for k in state)

    main(["test", *glue_cli_args(model, data, method, tmp_path / "test"), "--ckpt_path", str(ckpt)])
    tested = read_metrics(tmp_path / "test" / "logs")
    # validation is GLUE's reported split: the checkpoint's test numbers are its last validation's
    assert tested["test/loss"] == pytest.approx(fitted["val/loss"], rel=1e-5)
    assert tested["test/accuracy"] == pytest.approx(fitted["val/accuracy"])


def _pair_splits(kind: str) -> dict[str, list[dict]]:
    rows = [
        {"sentence1": r["premise"], "sentence2": r["hypothesis"], "premise": r["premise"],
         "hypothesis": r["hypothesis"], "label": float(i % 5) if kind == "stsb" else i % 3, "idx": i}
        for i, r in enumerate(pair_rows(16, 2))
    ]  # fmt: skip
    if kind == "stsb":
        return {"train": rows, "validation": rows[:8]}
    return {"train": rows, "validation": rows[:8], "test": rows[8:]}  # a data_dir holds these three


@pytest.mark.parametrize("kind", ["stsb", "mnli"])
def test_regression_and_two_test_splits(tmp_path: Path, kind: str) -> None:
    """STS-B: one output, MSE, Pearson/Spearman; MNLI: three labels, matched and mismatched test splits."""
    splits = _pair_splits(kind)
    model = tiny_roberta(tmp_path / "model", all_texts(splits))
    data = write_rows(tmp_path / "data", splits)
    args = glue_cli_args(model, data, "lora", tmp_path / "run", config=f"roberta-large_{kind}.yaml")
    if kind == "mnli":  # the offline overrides the MNLI file documents
        args += ["--data.init_args.validation_split", "validation"]
        args += ["--data.init_args.test_splits", "[validation, test]"]
    main(["test", *args])
    tested = read_metrics(tmp_path / "run" / "logs")
    if kind == "stsb":
        assert -1.0 <= tested["test/pearson"] <= 1.0 and -1.0 <= tested["test/spearman"] <= 1.0
    else:
        for split in ("validation", "test"):
            assert 0.0 <= tested[f"test/{split}/accuracy"] <= 1.0
