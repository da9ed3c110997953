"""``SAMTrainer`` under gradient accumulation: k micro-batches equal one k-times-larger batch (issue 19 §5).

transformers 5.x skips its division by ``gradient_accumulation_steps`` whenever the model's forward
takes ``**kwargs``, assuming the loss divides by ``num_items_in_batch``; BERT's classification head
takes ``**kwargs`` and ignores the count, so the stock Trainer's step is k times too large (shown
below). With SGD (where the factor shows) and no dropout, 2 micro-batches of 4 must give exactly the
plain-torch step on the 8 rows: a BERT classification head (per-micro-batch mean losses) and an OPT
causal LM (token counts differ between micro-batches, so only the window's count is exact).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    OPTConfig,
    OPTForCausalLM,
    Trainer,
    TrainingArguments,
)

from lit_bar.hf import BalancednessTrainerCallback, SAMTrainer

LR, RHO, STEPS, VOCAB, LENGTH = 0.5, 0.1, 2, 40, 7


class Rows(Dataset):
    def __init__(self, rows: list[dict[str, torch.Tensor]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def classification_rows(n: int = 8 * STEPS) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (n, LENGTH), generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]  # fmt: skip


def causal_rows(n: int = 8 * STEPS) -> list[dict[str, torch.Tensor]]:
    """Rows whose first ``i % 5`` labels are ignored (-100): micro-batches count different tokens."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (n, LENGTH), generator=gen)
    rows = []
    for i in range(n):
        labels = ids[i].clone()
        labels[: i % 5] = -100
        rows.append(
            {"input_ids": ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": labels}
        )
    return rows


def bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        max_position_embeddings=16, num_labels=3)  # fmt: skip
    return BertForSequenceClassification(config).double()


def opt() -> torch.nn.Module:
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                       num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=16, dropout=0.0,
                       attention_dropout=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=3)  # fmt: skip
    return OPTForCausalLM(config).double()


def lora_bert() -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=2, lora_alpha=2, target_modules=["query", "value"], init_lora_weights=False)
    torch.manual_seed(0)
    return get_peft_model(bert(), config)


def train(model, rows, tmp_path, batch=4, accumulation=2, trainer_cls=SAMTrainer, steps=STEPS, **kwargs):
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=steps, learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
        optim="sgd", train_sampling_strategy="sequential", save_strategy="no", report_to=[], use_cpu=True,
        seed=0, disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    trainer = trainer_cls(model=model, args=args, train_dataset=Rows(rows), **kwargs)
    trainer.train()
    return trainer


def hand_steps(model, rows, rho, steps=STEPS):
    """Plain-torch SAM (ρ = 0: plain) + SGD, one step per 8 rows, the model's own loss on all 8."""
    params = [p for p in model.parameters() if p.requires_grad]
    for s in range(steps):
        batch = {k: torch.stack([r[k] for r in rows[8 * s : 8 * s + 8]]) for k in rows[0]}
        grads = torch.autograd.grad(model(**batch).loss, params)
        eps = [torch.zeros_like(p) for p in params]
        if rho:
            norm = torch.sqrt(sum((g**2).sum() for g in grads))
            eps = [rho * g / norm for g in grads]
            with torch.no_grad():
                for p, e in zip(params, eps, strict=True):
                    p.add_(e)
            grads = torch.autograd.grad(model(**batch).loss, params)
        with torch.no_grad():
            for p, e, g in zip(params, eps, grads, strict=True):
                p.sub_(e).sub_(LR * g)
    return model


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_same(a, b, atol=1e-10):
    torch.testing.assert_close(weights(a), weights(b), atol=atol, rtol=0)


@pytest.mark.parametrize(
    ("build", "rows", "counts"),
    [(bert, classification_rows, False), (opt, causal_rows, True)],
    ids=["bert-classifier", "opt-causal-lm"],
)
@pytest.mark.parametrize("rho", [0.0, RHO], ids=["plain", "sam"])
def test_accumulation_equals_one_larger_batch(tmp_path, build, rows, counts, rho):
    data = rows()
    model = build()
    trainer = train(model, data, tmp_path, rho=rho)
    assert trainer._counts_items is counts  # measured: the causal LM divides by the window's count
    reference = hand_steps(build(), data, rho)
    assert_same(model, reference)
    whole = build()
    train(whole, data, tmp_path, batch=8, accumulation=1, rho=rho)  # the same through SAMTrainer
    assert_same(whole, reference)


def test_the_stock_trainer_takes_a_k_fold_step_on_a_bert_classification_head(tmp_path):
    """What the test above guards against: transformers' own step at k = 2 moves the weights twice as
    far as the 8-row step (one SGD step from the same start)."""
    data, start = classification_rows(), weights(bert())
    stock = bert()
    train(stock, data, tmp_path, trainer_cls=Trainer, steps=1)
    reference = hand_steps(bert(), data, 0.0, steps=1)
    for s, r, w in zip(weights(stock), weights(reference), start, strict=True):
        torch.testing.assert_close(s - w, 2 * (r - w), atol=1e-10, rtol=0)
    assert max(float((r - w).abs().max()) for r, w in zip(weights(reference), start, strict=True)) > 1e-3


def test_nbar_callback_under_accumulation_equals_one_larger_batch(tmp_path):
    data = classification_rows()
    callback = dict(mode="nbar", mu=0.5)
    accumulated, whole = lora_bert(), lora_bert()
    train(accumulated, data, tmp_path, rho=0.0, callbacks=[BalancednessTrainerCallback(**callback)])
    train(
        whole,
        data,
        tmp_path,
        batch=8,
        accumulation=1,
        rho=0.0,
        callbacks=[BalancednessTrainerCallback(**callback)],
    )
    assert_same(accumulated, whole)
    no_bar = lora_bert()
    train(no_bar, data, tmp_path, batch=8, accumulation=1, rho=0.0)
    assert (
        max(float((a - b).abs().max()) for a, b in zip(weights(whole), weights(no_bar), strict=True)) > 1e-4
    )


def test_bar_update_does_not_scale_with_the_stock_trainers_k_fold_gradient(tmp_path):
    """μ's term is η μ s x with s from a comparison of gradient norms: a common factor k leaves it
    alone. One SGD step of the stock Trainer: (k = 2) − (k = 1) is the same with and without nBAR."""
    data = classification_rows()

    def step(accumulation, callbacks):
        model = lora_bert()
        train(model, data, tmp_path, batch=8 // accumulation, accumulation=accumulation, trainer_cls=Trainer,
              steps=1, callbacks=callbacks)  # fmt: skip
        return weights(model)

    bar = lambda: [BalancednessTrainerCallback(mode="nbar", mu=0.5)]  # noqa: E731
    with_bar = [a - b for a, b in zip(step(2, bar()), step(1, bar()), strict=True)]
    without = [a - b for a, b in zip(step(2, []), step(1, []), strict=True)]
    torch.testing.assert_close(with_bar, without, atol=1e-10, rtol=0)
    assert max(float(d.abs().max()) for d in without) > 1e-5  # the k-fold gradient itself shows


def test_an_unclassifiable_loss_is_refused(tmp_path):
    class Sqrt(torch.nn.Module):
        """A loss that uses the count, but neither as L/n nor not at all: √(Σ/n)."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = opt()

        def forward(self, input_ids, attention_mask=None, labels=None, num_items_in_batch=None, **kwargs):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                             num_items_in_batch=num_items_in_batch)  # fmt: skip
            return {"loss": out.loss.sqrt(), "logits": out.logits}

    with pytest.raises(ValueError, match=r"doubling num_items_in_batch changed the loss by a factor 0\.707"):
        train(Sqrt(), causal_rows(), tmp_path, rho=RHO)
