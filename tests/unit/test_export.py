"""Adapters out and in: a lit-bar task module's ``adapter/`` folder opens in plain transformers + peft.

Each test builds a task module on a tiny random model, moves every trainable tensor off its
initialisation (peft starts lora_B at zero, so an untrained adapter would compare equal to the
base), writes the adapter with :func:`lit_bar.export.save_adapter`, and loads it back with nothing
but ``AutoModelFor<Task>.from_pretrained`` + ``PeftModel.from_pretrained``: the outputs must agree
to 1e-5. The wrong answers (the base without the adapter, the adapter without its head, the fused
GPT-2 pair with lora_alpha left unadjusted) are shown to differ by far more.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import hf as hf_tiny
from tiny.hf import TEMPLATE_WORDS, tiny_roberta

from lit_bar.export import classification_rows, load_adapter, save_adapter, save_merged
from lit_bar.tasks.causal import CausalLMTask
from lit_bar.tasks.generation import DataToTextGenerator
from lit_bar.tasks.glue import SequenceClassifier
from lit_bar.tasks.lora import LoraSettings
from lit_bar.tasks.prompt import PromptMLMClassifier

TOL = 1e-5
WORDS = ["the", "film", "plot", "cast", "was", "good", "bad", "great", "terrible", "It", "a", "b", "c"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("export")
    texts = [" ".join(WORDS), *TEMPLATE_WORDS]
    return {
        "roberta": str(tiny_roberta(base / "roberta", texts)),
        "opt": str(hf_tiny.save_tiny_opt(base / "opt", texts)),
        "gpt2": str(hf_tiny.save_tiny_gpt2(base / "gpt2", texts)),
    }


def _trained(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every trainable tensor (LoRA factors, head) away from its initial value; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return module.eval()


def _batch(vocab: int = 20, rows: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, vocab, (rows, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _plain_peft(auto_class: type, base: str, adapter: Path, **kwargs) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(auto_class.from_pretrained(base, **kwargs), str(adapter)).eval()


def test_glue_classifier_adapter_with_head_opens_in_peft(folders, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification as Auto

    module = _trained(SequenceClassifier(folders["roberta"], task_info={"num_labels": 3}))
    save_adapter(module.model, tmp_path / "adapter", folders["roberta"])
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    batch = _batch()
    with torch.no_grad():
        ours = module.compute_outputs(batch)
        theirs = _plain_peft(Auto, folders["roberta"], tmp_path / "adapter", num_labels=3)(**batch).logits
        base = Auto.from_pretrained(folders["roberta"], num_labels=3).eval()(**batch).logits
    assert torch.allclose(ours, theirs, atol=TOL, rtol=0)
    assert (ours - base).abs().max() > 100 * TOL  # the adapter + head change the logits


def test_prompt_mlm_adapter_opens_in_peft(folders, tmp_path: Path) -> None:
    from transformers import AutoModelForMaskedLM as Auto
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders["roberta"])
    words = [tokenizer.convert_tokens_to_ids(w) for w in ("terrible", "great")]
    info = {
        "label_word_ids": words,
        "mask_token_id": tokenizer.mask_token_id,
        "label_words": [" terrible", " great"],
    }
    module = _trained(PromptMLMClassifier(folders["roberta"], task_info=info))
    save_adapter(module.model, tmp_path / "adapter", folders["roberta"])
    batch = _batch()
    batch["input_ids"][:, 3] = tokenizer.mask_token_id
    with torch.no_grad():
        ours = module.compute_outputs(batch)
        full = _plain_peft(Auto, folders["roberta"], tmp_path / "adapter")(**batch).logits
        base = Auto.from_pretrained(folders["roberta"]).eval()(**batch).logits
    assert torch.allclose(ours, full[:, 3][:, words], atol=TOL, rtol=0)
    assert (ours - base[:, 3][:, words]).abs().max() > 100 * TOL
    rows = module.predict_step(batch, 0)
    assert [r["label_word"] for r in rows] == [[" terrible", " great"][int(i)] for i in ours.argmax(-1)]


def test_causal_lm_adapter_opens_in_peft(folders, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM as Auto

    lora = LoraSettings(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    module = _trained(CausalLMTask(folders["opt"], lora=lora))
    save_adapter(module.model, tmp_path / "adapter", folders["opt"])
    batch = _batch()
    with torch.no_grad():
        ours = module.compute_outputs(batch)
        theirs = _plain_peft(Auto, folders["opt"], tmp_path / "adapter")(**batch).logits
        base = Auto.from_pretrained(folders["opt"]).eval()(**batch).logits
    assert torch.allclose(ours, theirs, atol=TOL, rtol=0)
    assert (ours - base).abs().max() > 100 * TOL


def _gpt2(folder: str, **kwargs) -> DataToTextGenerator:
    lora = LoraSettings(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    return DataToTextGenerator(folder, lora=lora, **kwargs)


def test_gpt2_split_qv_pairs_fuse_into_one_stock_c_attn_adapter(folders, tmp_path: Path) -> None:
    """Stock GPT-2 + peft on c_attn (rank 2r, A = [A_q; A_v], B block-diagonal, k rows 0) = split q/v."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM as Auto

    module = _trained(_gpt2(folders["gpt2"]))
    save_adapter(module.model, tmp_path / "adapter", folders["gpt2"])
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["c_attn"] and config["r"] == 4 and config["lora_alpha"] == 16.0
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    b = weights["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert b.shape == (96, 4) and not b[32:64].any() and not b[:32, 2:].any() and not b[64:, :2].any()
    batch = _batch()
    with torch.no_grad():
        ours = module.compute_outputs(batch)
        stock = _plain_peft(Auto, folders["gpt2"], tmp_path / "adapter")
        theirs = stock(**batch).logits
        for layer in stock.base_model.model.transformer.h:  # lora_alpha left at 8: s = 8/2r, half the update
            layer.attn.c_attn.scaling["default"] = 8.0 / 4
        halved = stock(**batch).logits
    assert torch.allclose(ours, theirs, atol=TOL, rtol=0)
    assert (ours - halved).abs().max() > 100 * TOL


def test_adapter_path_restores_the_trained_module_head_included(folders, tmp_path: Path) -> None:
    """adapter_path = the whole trained state (head too); init_adapter takes the LoRA factors only."""
    info = {"num_labels": 2}
    trained = _trained(SequenceClassifier(folders["roberta"], task_info=info))
    save_adapter(trained.model, tmp_path / "adapter", folders["roberta"])
    restored = SequenceClassifier(folders["roberta"], task_info=info, adapter_path=str(tmp_path / "adapter"))
    started = SequenceClassifier(folders["roberta"], task_info=info, init_adapter=str(tmp_path / "adapter"))
    batch = _batch()
    with torch.no_grad():
        want = trained.compute_outputs(batch)
        assert torch.equal(restored.eval().compute_outputs(batch), want)
        assert (started.eval().compute_outputs(batch) - want).abs().max() > 100 * TOL  # fresh head
    assert restored.weights_source == str(tmp_path / "adapter") and started.weights_source is None


def test_adapter_path_splits_a_stock_gpt2_adapter(folders, tmp_path: Path) -> None:
    trained = _trained(_gpt2(folders["gpt2"]))
    save_adapter(trained.model, tmp_path / "adapter", folders["gpt2"])
    restored = _gpt2(folders["gpt2"], adapter_path=str(tmp_path / "adapter")).eval()
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(restored.compute_outputs(batch), trained.compute_outputs(batch))


def test_adapter_with_other_lora_settings_is_refused(folders, tmp_path: Path) -> None:
    """Same shapes, other alpha: loading would silently scale the update, so it is an error."""
    save_adapter(_trained(SequenceClassifier(folders["roberta"])).model, tmp_path / "a", folders["roberta"])
    other = LoraSettings(
        r=8, lora_alpha=32, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    with pytest.raises(ValueError, match="lora_alpha: adapter 16, model 32"):
        SequenceClassifier(folders["roberta"], lora=other, adapter_path=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="not a peft adapter folder"):
        load_adapter(SequenceClassifier(folders["roberta"]).model, tmp_path)
    with pytest.raises(ValueError, match="not both"):
        SequenceClassifier(
            folders["roberta"], init_adapter=str(tmp_path / "a"), adapter_path=str(tmp_path / "a")
        )


def test_merged_gpt2_is_a_stock_checkpoint_with_the_same_outputs(folders, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM as Auto

    module = _trained(_gpt2(folders["gpt2"]))
    save_merged(module.model, tmp_path / "merged", module.tokenizer)
    merged = Auto.from_pretrained(tmp_path / "merged").eval()
    batch = _batch()
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, module.compute_outputs(batch), atol=TOL, rtol=0)
    assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert type(module.model.base_model.model.transformer.h[0].attn.c_attn).__name__ == "FusedQKVSplit"


def test_classification_rows_by_hand() -> None:
    logits = torch.tensor([[0.0, 1.0, float("-inf")], [2.0, 0.0, 0.0]])
    rows = classification_rows(logits, ["neg", "pos", "x"], "label_name")
    e = torch.e
    assert rows[0]["label"] == 1 and rows[0]["label_name"] == "pos"
    assert rows[0]["probabilities"] == pytest.approx([1 / (1 + e), e / (1 + e)])  # the -inf class left out
    assert rows[1]["label"] == 0 and rows[1]["probabilities"] == pytest.approx(
        [e**2 / (e**2 + 2), 1 / (e**2 + 2), 1 / (e**2 + 2)]
    )


@pytest.mark.parametrize("family", ["glue", "prompt", "causal", "generation"])
def test_every_task_module_loads_from_its_checkpoint_alone(folders, tmp_path: Path, family: str) -> None:
    """``Trainer.save_checkpoint``, then ``load_from_checkpoint(path)`` alone: same outputs, no base."""
    import lightning.pytorch as pl
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders["roberta"])
    words = [tokenizer.convert_tokens_to_ids(w) for w in ("terrible", "great")]
    build = {
        "glue": lambda: SequenceClassifier(
            folders["roberta"], task_info={"num_labels": 2}, label_names=["n", "p"]
        ),
        "prompt": lambda: PromptMLMClassifier(
            folders["roberta"], task_info={"label_word_ids": words, "mask_token_id": tokenizer.mask_token_id}
        ),
        "causal": lambda: CausalLMTask(
            folders["opt"], lora=LoraSettings(r=2, target_modules=["q_proj", "v_proj"])
        ),
        "generation": lambda: _gpt2(folders["gpt2"]),
    }[family]
    module = _trained(build())
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(module)
    module.trainer = trainer
    trainer.strategy.setup_optimizers(trainer)  # the checkpoint holds the optimizer state
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)  # hparams included: plain types only
    assert frozen and not frozen & set(saved["state_dict"])
    loaded = type(module).load_from_checkpoint(tmp_path / "m.ckpt").eval()
    batch = _batch()
    if family == "prompt":
        batch["input_ids"][:, 3] = tokenizer.mask_token_id
    with torch.no_grad():
        assert torch.equal(loaded.compute_outputs(batch), module.compute_outputs(batch))
