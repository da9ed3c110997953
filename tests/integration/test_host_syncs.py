"""No host sync charged to lit_bar in a training step (issue 8 §1), counted by
``lit_bar.algorithms.syncs.SyncCounter``.

A CPU run never waits for a device, so the counter records the ops that *would* make the host wait on a
GPU (``.item()``, ``nonzero``, boolean-mask indexing, ...) and charges each to the Python line that
issued it; syncs issued inside libraries (torch's CPU optimizer step counters, transformers' SDPA mask
check, Lightning's logging) are reported apart. Backward ops are charged to the forward line that
built them (``trace_backward=True``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from test_balancedness_callback import make_lora_net
from tiny import hf as hf_tiny
from tiny.sam import TinySAM, adamw, fit, loader, make_data

from lit_bar.algorithms.syncs import SyncCounter
from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.tasks.language_model import mean_target_logprobs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

PERTURBATIONS = {
    "sam": {},
    "asam": {"adaptive": True, "rho": 0.5},
    "fsam": {"perturbation": "functional"},
    "psam": {"precondition": "adam"},
}


class Phases(Callback):
    """Stamps each record with the micro-batch that issued it (``batch 0``, ``batch 1``, ...)."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counter.phase = f"batch {batch_idx}"

    def on_train_end(self, trainer, pl_module):
        self.counter.phase = "end"


class ItemInLoss(TinySAM):
    """A loss that converts itself to a Python float: the sync the counter must catch."""

    def loss_from_outputs(self, outputs, batch):
        loss = F.mse_loss(outputs, batch[1])
        self.seen = loss.item()  # the deliberate sync
        return loss


def counted_fit(module, callbacks=(), batches=4, **trainer_kwargs) -> SyncCounter:
    x, y = make_data(4 * batches)
    counter = SyncCounter(trace_backward=True)
    counter.phase = "setup"
    with counter:
        fit(module, loader(x, y, 4), callbacks=[*callbacks, Phases(counter)], **trainer_kwargs)
    return counter


def test_the_counter_catches_a_deliberate_item_in_a_loss():
    counter = counted_fit(ItemInLoss(make_lora_net(), optimizer=adamw(), rho=0.05), log_every_n_steps=1000)
    caught = [r for r in counter.records if r.file == __file__ and r.function == "loss_from_outputs"]
    assert len(caught) == 2 * 4  # two forwards (ascent, descent) per SAM step, 4 steps
    assert {r.op for r in caught} == {"aten._local_scalar_dense.default"}
    assert {r.owner for r in caught} == {"other"} and not counter.charged_to("lit_bar"), counter.report()


def test_the_counter_charges_lit_bar_lines_to_lit_bar():
    """The counter's other half: a sync issued by lit_bar code is charged to lit_bar (here the host-side
    ``target_index``, which syncs when called on device tensors, forward and backward)."""
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, -100, -100, -100]])
    with SyncCounter(trace_backward=True) as counter:
        mean_target_logprobs(logits, labels).sum().backward()
    charged = counter.charged_to("lit_bar")
    assert {r.op for r in charged} >= {"aten.nonzero.default", "aten._local_scalar_dense.default"}
    assert all(r.file.endswith("lit_bar/tasks/language_model.py") for r in charged)


@pytest.mark.parametrize("m", [None, 2], ids=["m=None", "m=2"])
@pytest.mark.parametrize("accumulation", [1, 2], ids=["acc1", "acc2"])
@pytest.mark.parametrize("mode", ["nbar", "obar"])
@pytest.mark.parametrize("perturbation", list(PERTURBATIONS))
def test_no_sync_charged_to_lit_bar_in_sam_steps(perturbation, mode, accumulation, m):
    kwargs = {"rho": 0.05, **PERTURBATIONS[perturbation]}
    module = TinySAM(make_lora_net(), optimizer=adamw(), m=m, accumulate_grad_batches=accumulation, **kwargs)
    counter = counted_fit(module, [BalancednessCallback(mode=mode, mu=0.5)], log_every_n_steps=1000)
    assert not counter.charged_to("lit_bar"), counter.report()
    in_steps = [r for r in counter.charged_to("lit_bar", "host_copy") if r.phase.startswith("batch")]
    assert not in_steps, counter.report()


# ------------------------------------------------------------------ compute_loss of every task family
def _write(folder: Path, splits: dict[str, list[dict]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, list[str]]:
    """CLI arguments of one tiny run per task family (the rows and models of the family CLI tests)."""
    from test_causal_cli import TEMPLATE_WORDS
    from test_causal_cli import _rows as causal_rows
    from test_generation_cli import NAMES, SEEN, UNSEEN
    from test_generation_cli import _rows as webnlg_rows
    from tiny.hf import all_texts, sentence_rows, tiny_roberta

    base = tmp_path_factory.mktemp("families")
    sst2 = {"train": sentence_rows(16, 0, "tr"), "validation": sentence_rows(8, 1, "va")}
    roberta = str(tiny_roberta(base / "roberta", all_texts(sst2)))
    sst2_dir = _write(base / "sst2", sst2)
    opt_rows = {task: causal_rows(task, 24) for task in ("sst2", "squad")}
    opt = str(hf_tiny.save_tiny_opt(base / "opt", [json.dumps(r) for rows in opt_rows.values() for r in rows]
                                    + [TEMPLATE_WORDS]))  # fmt: skip
    webnlg = {"train": webnlg_rows(SEEN, 8, 2), "validation": webnlg_rows(SEEN, 4, 2),
              "test": webnlg_rows(SEEN + UNSEEN, 6, 3)}  # fmt: skip
    gpt2 = str(hf_tiny.save_tiny_gpt2(base / "gpt2", [json.dumps(r) for rows in webnlg.values() for r in rows]
                                      + [n.replace("_", " ") for n in NAMES]))  # fmt: skip
    sizes = ["--data.init_args.num_train", "8", "--data.init_args.num_validation", "4",
             "--data.init_args.num_test", "4"]  # fmt: skip

    def causal(task: str) -> str:
        return _write(base / task, {"train": opt_rows[task][:16], "validation": opt_rows[task][16:]})

    return {
        "glue": ["configs/glue/roberta-large_sst2.yaml", roberta, sst2_dir],
        "prompt": ["configs/fewshot/roberta-large_sst2.yaml", roberta, sst2_dir, "--data.init_args.k", "4"],
        "causal-candidates": ["configs/opt/opt-1.3b_sst2.yaml", opt, causal("sst2"), *sizes],
        "causal-squad-lm": ["configs/opt/opt-1.3b_squad.yaml", opt, causal("squad"), *sizes],
        "webnlg": ["configs/gpt2/gpt2-medium_webnlg.yaml", gpt2, _write(base / "webnlg", webnlg)],
    }


def _module_and_batch(spec: list[str], method: str):
    """Instantiate model and data through ``lit-bar``'s CLI (no run); one training batch, prepared on
    the host as Lightning prepares it (``on_before_batch_transfer``: host-side work, before the GPU)."""
    from lit_bar.cli import LitBarCLI, cli_kwargs

    config, model, data, *extra = spec
    args = [
        "--config", str(ROOT / config), "--config", str(ROOT / f"configs/method/{method}.yaml"),
        "--config", str(ROOT / "configs/debug.yaml"),
        "--model.init_args.model_name_or_path", model, "--data.init_args.data_dir", data,
        "--data.init_args.batch_size", "4", *extra,
    ]  # fmt: skip
    cli = LitBarCLI(**cli_kwargs(run=False), args=args)
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.train_dataloader()))
    return cli.model, cli.model.on_before_batch_transfer(batch, 0)


@pytest.mark.parametrize("family", ["glue", "prompt", "causal-candidates", "causal-squad-lm", "webnlg"])
def test_no_sync_charged_to_lit_bar_in_compute_loss(families, family, monkeypatch):
    """Forward + backward of each family's training loss, both ways the SAM step runs it: SAM's
    ``compute_loss``, and Functional-SAM's ``compute_outputs`` then ``loss_from_outputs``."""
    monkeypatch.setattr("sys.argv", ["lit-bar"])
    module, batch = _module_and_batch(families[family], "sam")
    module.train()
    with SyncCounter(trace_backward=True) as counter:
        module.compute_loss(batch).backward()
        counter.phase = "functional"
        outputs = module.compute_outputs(batch)
        loss = module.loss_from_outputs(outputs, batch)
        loss.backward()
    assert torch.isfinite(loss)
    assert not counter.charged_to("lit_bar"), counter.report()
    assert not counter.charged_to("lit_bar", "host_copy"), counter.report()
