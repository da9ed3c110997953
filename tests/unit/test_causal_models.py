"""Candidate scores, the candidate cross-entropy and GPT-2's q/k/v split, against few-line references."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from lit_bar.tasks.causal import candidate_score_matrix
from lit_bar.tasks.generation import FusedQKVSplit, split_fused_qkv
from lit_bar.tasks.language_model import mean_target_logprobs


def test_mean_target_logprobs_equals_a_loop_over_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, -100, -100, -100]])
    expected = []
    for row in range(2):  # the token at t is predicted by the logits at t - 1
        logps = [
            torch.log_softmax(logits[row, t - 1], -1)[labels[row, t]] for t in range(5) if labels[row, t] >= 0
        ]
        expected.append(torch.stack(logps).mean())
    assert torch.allclose(mean_target_logprobs(logits, labels), torch.stack(expected), atol=1e-6)


def test_candidate_cross_entropy_with_ragged_candidates_has_finite_gradients():
    scores = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.5], requires_grad=True)
    batch = {"example_index": torch.tensor([0, 0, 0, 1, 1]), "candidate_index": torch.tensor([0, 1, 2, 0, 1]),
             "label": torch.tensor([2, 0])}  # fmt: skip
    loss = F.cross_entropy(candidate_score_matrix(scores, batch), batch["label"])
    by_hand = (-torch.log_softmax(scores[:3], 0)[2] - torch.log_softmax(scores[3:], 0)[0]) / 2
    assert torch.allclose(loss, by_hand)
    loss.backward()
    assert torch.isfinite(scores.grad).all()


def test_split_c_attn_keeps_gpt2_outputs_and_exposes_q_and_v():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=20, n_positions=16)).eval()
    ids = torch.randint(0, 20, (2, 6))
    before = model(ids).logits
    assert split_fused_qkv(model) == 2
    assert isinstance(model.transformer.h[0].attn.c_attn, FusedQKVSplit)
    assert torch.allclose(model(ids).logits, before, atol=1e-5)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {"q_proj", "k_proj", "v_proj"} <= names


def test_lora_on_split_gives_separate_q_and_v_pairs():
    from peft import LoraConfig, get_peft_model

    from lit_bar import find_lora_pairs

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=20, n_positions=16))
    split_fused_qkv(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    pairs = find_lora_pairs(peft_model)
    assert len(pairs) == 4  # 2 layers × (q, v), each its own (A, B)
    assert all(p.x.shape == (4, 16) and p.y.shape == (16, 4) for p in pairs)  # A: r × d_in, B: d_out × r
    assert sorted(p.name.split(".")[-2] for p in pairs) == ["q_proj", "q_proj", "v_proj", "v_proj"]
