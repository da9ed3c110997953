"""What a LoRA run leaves behind, through the Trainer: lean checkpoints, ``adapter/``, ``predictions.jsonl``.

A tiny random RoBERTa + LoRA trains three steps with a validation after each; a ``ModelCheckpoint``
monitors a metric that is best at the *first* validation, so the best checkpoint (step 1) and the
end of training (step 3) hold different weights and the test can tell which one was exported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import tiny_sst2

from lit_bar.callbacks import AdapterExport, PredictionWriter
from lit_bar.data.glue import GlueDataModule
from lit_bar.tasks.glue import SequenceClassifier
from lit_bar.tasks.lora import LoraSettings

NAMES = ["negative", "positive"]


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    model, data = tiny_sst2(tmp_path_factory.mktemp("artifacts"), train=12, validation=6)
    return str(model), str(data)


class BestFirst(pl.Callback):
    """Log ``order`` = −step at each validation: with ``mode="max"`` the first validation is the best."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("order", -float(trainer.global_step))


def _module(model_dir: str, **kwargs) -> SequenceClassifier:
    lora = LoraSettings(r=4, target_modules=["query", "value"], modules_to_save=["classifier"])
    return SequenceClassifier(
        model_dir,
        task_info={"num_labels": 2},
        lora=lora,
        label_names=NAMES,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),  # a callable: kept out of hparams
        rho=0.05,
        **kwargs,
    )


def _data(paths: tuple[str, str]) -> GlueDataModule:
    return GlueDataModule(data_dir=paths[1], tokenizer_name_or_path=paths[0], batch_size=4, max_length=32)


def _trainer(root: Path, callbacks: list, **kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, default_root_dir=str(root), callbacks=callbacks,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def fitted(sst2_like, tmp_path_factory) -> tuple[Path, SequenceClassifier]:
    root = tmp_path_factory.mktemp("fit")
    pl.seed_everything(3)
    module = _module(sst2_like[0])
    checkpoint = ModelCheckpoint(  # save_on_train_epoch_end: Lightning's default for val_check_interval=1
        dirpath=root / "ckpt", filename="best", monitor="order", mode="max", save_on_train_epoch_end=False,
    )  # fmt: skip
    callbacks = [BestFirst(), checkpoint, AdapterExport(merged_dirname="merged")]
    trainer = _trainer(root, callbacks, max_steps=3, val_check_interval=1, limit_val_batches=1)
    trainer.fit(module, _data(sst2_like))
    return root, module


def _logits(module: torch.nn.Module, paths: tuple[str, str]) -> torch.Tensor:
    data = _data(paths)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        return module.eval().compute_outputs(batch)


def test_checkpoint_holds_trainable_weights_only_and_loads_without_arguments(fitted, sst2_like) -> None:
    root, module = fitted
    best = torch.load(root / "ckpt/best.ckpt", map_location="cpu", weights_only=True)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    frozen = set(module.state_dict()) - trainable
    assert trainable <= set(best["state_dict"]) and not frozen & set(best["state_dict"])
    assert best["optimizer_states"] and "optimizer" not in best["hyper_parameters"]
    assert best["hyper_parameters"]["lora"]["r"] == 4  # a plain dict: weights_only loads it

    loaded = SequenceClassifier.load_from_checkpoint(root / "ckpt/best.ckpt")  # no other argument
    assert loaded.weights_source == "checkpoint" and loaded.label_names == NAMES
    got, final = loaded.state_dict(), module.state_dict()
    assert all(torch.equal(got[k], v) for k, v in best["state_dict"].items())  # step 1's weights
    assert max(float((got[k] - final[k]).abs().max()) for k in trainable) > 1e-3  # steps 2-3 moved them
    pretrained = [k for k in frozen if "original_module" not in k]  # peft's frozen head copy is random
    assert all(torch.equal(got[k], final[k]) for k in pretrained)  # reloaded from model_name_or_path


def test_adapter_is_exported_from_the_best_checkpoint_without_a_logger(fitted, sst2_like) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    root, module = fitted
    config = json.loads((root / "adapter/adapter_config.json").read_text())  # default_root_dir: no logger
    assert config["base_model_name_or_path"] == sst2_like[0]
    head = "base_model.model.classifier.out_proj.weight"  # peft's name in the folder
    exported = load_file(root / "adapter/adapter_model.safetensors")[head]
    best = torch.load(root / "ckpt/best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    trained = "model.base_model.model.classifier.modules_to_save.default.out_proj.weight"
    assert torch.equal(exported, best[trained])
    assert (exported - dict(module.named_parameters())[trained]).abs().max() > 1e-3  # not end of training

    base = AutoModelForSequenceClassification.from_pretrained(sst2_like[0], num_labels=2)
    plain = PeftModel.from_pretrained(base, str(root / "adapter")).eval()
    data = _data(sst2_like)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        theirs = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        merged = AutoModelForSequenceClassification.from_pretrained(root / "merged").eval()  # no peft
        deployed = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ours = _logits(SequenceClassifier.load_from_checkpoint(root / "ckpt/best.ckpt"), sst2_like)
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0)
    assert torch.allclose(deployed, ours, atol=1e-5, rtol=0)


def test_predict_writes_one_row_per_example(fitted, sst2_like, tmp_path: Path) -> None:
    root, _ = fitted
    module = SequenceClassifier.load_from_checkpoint(root / "ckpt/best.ckpt")
    _trainer(tmp_path, [PredictionWriter()]).predict(module, _data(sst2_like), return_predictions=False)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(6))  # the 6 rows of the test (= validation) split
    probabilities = torch.softmax(_logits(module, sst2_like).float(), dim=-1)[: len(rows)]
    for row, probs in zip(rows, probabilities, strict=False):
        assert row["probabilities"] == pytest.approx(probs.tolist(), abs=1e-6)
        assert row["label"] == int(probs.argmax()) and row["label_name"] == NAMES[row["label"]]


def test_predict_rows_of_several_splits_and_of_regression(fitted, sst2_like, tmp_path: Path) -> None:
    root, _ = fitted
    module = SequenceClassifier.load_from_checkpoint(root / "ckpt/best.ckpt")
    data = GlueDataModule(data_dir=sst2_like[1], tokenizer_name_or_path=sst2_like[0], batch_size=4,
                          test_splits=["validation", "train"])  # fmt: skip
    _trainer(tmp_path, [PredictionWriter()]).predict(module, data, return_predictions=False)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [(r["dataloader_idx"], r["index"]) for r in rows] == [(0, i) for i in range(6)] + [
        (1, i) for i in range(12)
    ]

    regression = SequenceClassifier(sst2_like[0], task_info={"num_labels": 1})
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        values = regression.eval().compute_outputs(batch)
        rows = regression.predict_step(batch, 0)
    assert [r["value"] for r in rows] == pytest.approx(values.tolist()) and "label" not in rows[0]


def test_predict_without_trained_weights_is_refused(sst2_like, tmp_path: Path) -> None:
    module = _module(sst2_like[0])
    with pytest.raises(ValueError, match=r"predict needs trained weights.*--ckpt_path.*adapter_path"):
        _trainer(tmp_path, [PredictionWriter()]).predict(module, _data(sst2_like))
