"""``CausalLMTask``: a causal LM (OPT, Llama, ...) + LoRA scoring candidates or generating answers.

The MeZO protocol (Malladi et al. 2023) the paper's Table 3 follows (docs/algorithms.md §6)::

    classification   score(c) = mean_t log p(c_t | prompt, c_<t)     over the candidate's tokens
                     prediction = argmax_c score(c)
    training         "candidates": cross-entropy over the scores (SST-2, CB, RTE)
                     "lm":         LM loss on the gold answer's tokens (COPA, ReCoRD, SQuAD)
    generation       greedy, ≤ max_new_tokens, stop at a newline; SQuAD F1 / EM (SQuAD)

Batches (built by :class:`lit_bar.data.causal.CandidateDataModule`) describe themselves:

* scoring: ``input_ids``, ``attention_mask``, ``labels`` (N, L), one row per (example, candidate)
  with ``-100`` outside the candidate's tokens; ``example_index``, ``candidate_index``, ``gold``
  (N,); ``label`` (B,), the gold candidate of each example;
* LM: ``input_ids``, ``attention_mask``, ``labels`` (B, L), the gold answer only;
* generation: an LM batch plus left-padded ``prompt_ids`` and ``prompt_mask`` and ``references``
  (the reference answers of each example).

``compute_outputs`` returns the (N,) candidate scores of a scoring batch and the logits of an LM
batch; ``loss_from_outputs`` turns them into the cross-entropy over candidates or the LM loss, so
Functional-SAM works with both. ``val/loss`` is that loss on the validation batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.text import SQuAD
from typing_extensions import override

from lit_bar.algorithms.sharded import gathered
from lit_bar.tasks.base import LoRATask
from lit_bar.tasks.checkpoint import UNSAVED_HPARAMS, plain_hparams
from lit_bar.tasks.language_model import (
    decode_continuations,
    load_causal_lm,
    mean_target_logprobs,
    shifted_lm_loss,
    stop_token_ids,
    target_index,
)
from lit_bar.tasks.lora import LoraSettings, apply_lora, as_lora_settings
from lit_bar.tasks.metrics import classification_rows

__all__ = ["CausalLMTask", "candidate_score_matrix"]

STAGES = ("val", "test")


class CausalLMTask(LoRATask):
    """Candidate scoring / answer generation with a causal LM, trained by SAM, BAR or plain LoRA.

    Args:
        model_name_or_path: Hub name or local folder of an ``AutoModelForCausalLM`` checkpoint.
        task_info: What the data module decided (linked by ``lit-bar``): ``objective`` and
            ``generation``; informational here, the batches describe themselves.
        lora: LoRA settings (MeZO/paper: r=8, alpha=16 on ``[q_proj, v_proj]``); ``None`` trains
            every weight.
        adapter_path: Restore a trained model from the ``adapter/`` folder ``lit-bar fit`` writes
            (peft format), e.g. for ``lit-bar validate/test/predict``.
        max_new_tokens: Generation budget for generation tasks (SQuAD: 50).
        stop_at_newline: Stop generating at a newline and cut the answer there.
        trust_remote_code: Allow the checkpoint's own modelling code to run.
        model_kwargs: More ``from_pretrained`` arguments (e.g. ``{"gguf_file": "model.gguf"}``).
        **kwargs: :class:`lit_bar.SAMModule` arguments (optimizer, lr_scheduler, rho, ...).
    """

    def __init__(
        self,
        model_name_or_path: str,
        task_info: dict[str, Any] | None = None,
        lora: LoraSettings | None = None,
        adapter_path: str | None = None,
        max_new_tokens: int = 50,
        stop_at_newline: bool = True,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=UNSAVED_HPARAMS)
        plain_hparams(self.hparams)  # LoraSettings as a dict, paths as str: weights_only loads them
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        self.task_info = dict(task_info or {})
        self.max_new_tokens = max_new_tokens
        self.stop_at_newline = stop_at_newline
        model, self.tokenizer = load_causal_lm(model_name_or_path, trust_remote_code, model_kwargs)
        self.model = apply_lora(model, as_lora_settings(lora)).train()  # from_pretrained: eval mode
        self.restore_adapter(adapter_path)
        self.accuracy = torch.nn.ModuleDict({stage: MeanMetric() for stage in STAGES})
        self.squad = torch.nn.ModuleDict({stage: SQuAD() for stage in STAGES})

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.m is not None and self.task_info.get("objective") == "candidates":
            raise ValueError(
                "m-sharpness splits batches by rows, but a candidate-scoring batch holds several rows per "
                "example; use m=None with objective='candidates'"
            )

    # ----------------------------------------------------------------- loss
    @override
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Find a scoring batch's target positions on the host, so the forward never waits for the GPU."""
        if isinstance(batch, dict) and "example_index" in batch and "target_index" not in batch:
            batch["target_index"] = target_index(batch["labels"])
        return batch

    @override
    def compute_outputs(self, batch: dict[str, Any]) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if "example_index" in batch:
            return mean_target_logprobs(logits, batch["labels"], batch.get("target_index"))
        return logits

    @override
    def loss_from_outputs(self, outputs: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        if "example_index" in batch:
            columns = len(batch["candidate_index"])  # N bounds the candidates: no host sync in the step
            return F.cross_entropy(candidate_score_matrix(outputs, batch, columns), batch["label"])
        return shifted_lm_loss(outputs, batch["labels"])

    # ----------------------------------------------------------------- evaluation
    @override
    def evaluation_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        """Loss, then accuracy (scoring) or generated answers' SQuAD F1/EM (generation), for one stage."""
        outputs = self.compute_outputs(batch)
        loss = self.loss_from_outputs(outputs, batch)
        size = len(batch["label"]) if "label" in batch else batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=size)
        if "example_index" in batch:
            scores = candidate_score_matrix(outputs.detach(), batch)
            gold = candidate_gold_matrix(batch, scores.shape)
            correct = gold.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)
            self.accuracy[stage].update(correct.float())
            self.log(f"{stage}/accuracy", self.accuracy[stage], prog_bar=stage == "val", batch_size=size)
        elif "prompt_ids" in batch:
            answers = self.generate_answers(batch["prompt_ids"], batch["prompt_mask"])
            self.squad[stage].update(*squad_inputs(answers, batch["references"]))
        return loss

    @override
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        """One row per example: the generated ``text`` (generation), or the chosen candidate's ``label``,
        its text (``label_word`` for fixed candidates, ``candidate`` for per-example ones) and the
        probabilities (softmax of the candidates' mean log-probabilities, the training objective's)."""
        if "example_index" not in batch:
            texts = self.generate_answers(batch["prompt_ids"], batch["prompt_mask"])
            return [{"text": text} for text in texts]
        rows = classification_rows(candidate_score_matrix(self.compute_outputs(batch), batch))
        fixed = self.task_info.get("candidates")
        for b, row in enumerate(rows):
            if fixed:
                row["label_word"] = fixed[row["label"]]
            elif "candidates" in batch:
                row["candidate"] = batch["candidates"][b][row["label"]]
        return rows

    @torch.no_grad()
    def generate_answers(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[str]:
        """Greedy answers to left-padded prompts: ≤ ``max_new_tokens``, cut at the first newline."""
        with gathered(self.model):  # FSDP2: generate bypasses the root's forward, which gathers
            sequences = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=stop_token_ids(self.tokenizer, self.stop_at_newline),
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return decode_continuations(self.tokenizer, sequences, prompt_ids.shape[1], self.stop_at_newline)

    @override
    def on_evaluation_epoch_end(self, stage: str) -> None:
        metric = self.squad[stage]
        if not metric.update_count:
            return
        values = metric.compute()
        self.log(f"{stage}/f1", values["f1"], prog_bar=True)
        self.log(f"{stage}/exact_match", values["exact_match"])
        metric.reset()


def candidate_score_matrix(
    scores: torch.Tensor, batch: dict[str, Any], columns: int | None = None
) -> torch.Tensor:
    """(B, C) matrix of the (N,) candidate scores; ``-inf`` where an example has no such candidate.

    Args:
        scores: ``(N,)`` candidate scores, one per row of the batch.
        batch: The scoring batch (``label``, ``example_index``, ``candidate_index``).
        columns: C. ``None``: the largest candidate count (C_max; reading it is a host sync on a GPU).
            The training loss passes N, the number of rows, which bounds every example's count
            without reading a tensor: the extra ``-inf`` columns add nothing to a softmax.
    """
    if columns is None:
        columns = int(batch["candidate_index"].max()) + 1
    shape = (len(batch["label"]), columns)
    matrix = torch.full(shape, float("-inf"), device=scores.device, dtype=scores.dtype)
    return matrix.index_put((batch["example_index"], batch["candidate_index"]), scores)


def candidate_gold_matrix(batch: dict[str, Any], shape: torch.Size) -> torch.Tensor:
    """(B, C_max) bool matrix: which candidates are correct (ReCoRD may have several)."""
    gold = torch.zeros(shape, dtype=torch.bool, device=batch["gold"].device)
    return gold.index_put((batch["example_index"], batch["candidate_index"]), batch["gold"])


def squad_inputs(answers: list[str], references: list[list[str]]) -> tuple[list, list]:
    """``torchmetrics.text.SQuAD`` ``preds`` and ``target`` (ids local to the batch: one update call)."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} reference lists")
    preds = [{"prediction_text": answer, "id": str(i)} for i, answer in enumerate(answers)]
    target = [
        {"answers": {"text": list(refs), "answer_start": [0] * len(refs)}, "id": str(i)}
        for i, refs in enumerate(references)
    ]
    return preds, target
