"""The step benchmark's distributed rows: LoRA, nBAR and SAM under DDP and FSDP2 on several CPU processes.

    python scripts/benchmark_step.py --strategies ddp fsdp2 --rows      # only the distributed rows

Processes: the rows run in ``--processes`` CPU processes (gloo), started by the benchmark as
torchrun would start them (Lightning then starts none itself); every rank trains the same rows in
the same order. Each process is handed its
own part of every batch (``--batch`` rows split over the processes, no distributed sampler), so a
distributed step sees the same examples as a single-process one. Each run builds a fresh model
from seed 0, so every rank starts from the same weights (FSDP2 keeps each rank's own slice of them;
it broadcasts nothing).

Timing: as for the single-process rows, ``--rounds`` rounds over the rows in a rotated order, the
first ``--warmup`` steps of each run dropped, ratios taken per round with bootstrap 95 % intervals
(:mod:`.report`). A distributed step's wall time is the longest of the processes' windows (the step
is done when the slowest process is); its CPU time is the sum over the processes (the work the step
took on all of them).

Peak memory, per process: each row again in its own fresh run of ``--processes`` processes, read
from ``/proc/self/status`` (``VmHWM``, the peak resident set, reset by writing 5 to
``/proc/self/clear_refs``): once from building the model to the end of ``fit`` (which includes the
unsharded model FSDP2 starts from: every process builds all of it, as the task modules do) and once
over the training steps alone (reset at ``on_train_start``, after FSDP2 sharded the model). Not
``ru_maxrss``: a process inherits the peak of the process that started it there. The ranks are
forked (see :func:`_launch`), so the library pages count only once a rank touches them: compare
the distributed rows with each other, not with the single-process rows' absolute numbers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed
from lightning.pytorch import Callback

from lit_bar.algorithms.sharded import is_sharded
from lit_bar.experiments.benchmark.models import build_model, make_batches
from lit_bar.experiments.benchmark.runners import LIGHTNING, Clock, reset_peak_rss, run_lightning, status_kib
from lit_bar.experiments.environment import quiet_libraries
from lit_bar.experiments.methods import SUCCESSORS

__all__ = ["DEFAULT_METHODS", "METHODS", "STRATEGIES", "child", "measure", "row_names"]

#: ``--strategies`` value → the Lightning strategy's label in the row names ("FSDP2 SAM")
STRATEGIES = {"ddp": "DDP", "fsdp2": "FSDP2"}
#: methods that run under both strategies (Flat-LoRA and Bi-LoRA read whole LoRA layers: refused under FSDP2)
METHODS = tuple(name for name in LIGHTNING if name not in SUCCESSORS)
DEFAULT_METHODS = ("LoRA", "LoRA-nBAR", "SAM")
MIB = 2.0**20


def row_names(strategies: list[str], methods: list[str]) -> list[str]:
    """The distributed rows, ``"<strategy label> <method>"``, strategy by strategy."""
    return [f"{STRATEGIES[s]} {m}" for s in strategies for m in methods]


def _parse_row(row: str) -> tuple[str, str]:
    label, method = row.split(" ", 1)
    return next(s for s, name in STRATEGIES.items() if name == label), method


def _rank_part(batches: list, rank: int, world: int) -> list:
    """This process's rows of every batch: the ``rank``-th of ``world`` equal parts."""
    size = len(batches[0][0])
    part = slice(rank * size // world, (rank + 1) * size // world)
    return [tuple(t[part] for t in batch) for batch in batches]


def _train(row: str, spec: dict[str, Any], steps: int, clock: Clock, callbacks: list | None = None) -> bool:
    """Train ``row`` for ``steps`` steps in this process, as one rank of the run; whether every
    parameter ended up sharded (an FSDP2 ``DTensor``)."""
    strategy, method = _parse_row(row)
    torch.manual_seed(0)  # the same initial weights in every rank and every run
    backbone, _ = build_model("cls", spec["model"])
    batches = make_batches(backbone.config.vocab_size, spec["batch"], spec["length"], steps, "cls")
    rank = int(os.environ["LOCAL_RANK"])
    mine = _rank_part(batches, rank, spec["processes"])
    module = run_lightning(
        method, backbone, mine, torch.device("cpu"), clock,
        strategy=strategy, devices=spec["processes"], extra_callbacks=callbacks or [],
    )  # fmt: skip
    if len(clock.wall) != steps:
        raise RuntimeError(f"{row}: timed {len(clock.wall)} steps, expected {steps}")
    return all(is_sharded(p) for p in module.parameters())


def _time_rows(spec: dict[str, Any]) -> dict[str, Any]:
    """``rounds`` rotated rounds over the rows; per clock and row, one list of step times per round."""
    rows = spec["rows"]
    times: dict[str, dict[str, list[list[float]]]] = {c: {r: [] for r in rows} for c in ("wall", "cpu")}
    sharded = {}
    for r in range(spec["rounds"]):
        for row in rows[r % len(rows) :] + rows[: r % len(rows)]:
            clock = Clock(torch.device("cpu"))
            sharded[row] = _train(row, spec, spec["steps"], clock)
            for name, values in clock.result(spec["warmup"]).items():
                times[name][row].append(values)
        if torch.distributed.get_rank() == 0:
            medians = ", ".join(
                f"{row} {1000 * statistics.median(times['wall'][row][-1]):.0f}" for row in rows
            )
            print(f"distributed round {r + 1}/{spec['rounds']} rank 0 wall ms: {medians}", flush=True)
    return {"times": times, "sharded": sharded}


class _MemoryProbe(Callback):
    """Peak resident set (``VmHWM``) of this process over ``fit`` up to the first step, and over the
    training steps (reset at ``on_train_start``, after FSDP2 sharded the model)."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.setup_peak = status_kib("VmHWM")
        reset_peak_rss()
        self.train_start = status_kib("VmRSS")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.train_peak = status_kib("VmHWM")


def _memory_row(spec: dict[str, Any]) -> dict[str, Any]:
    """This process's peak memory over ``memory_steps`` steps of the one row of a memory run, in MiB."""
    (row,) = spec["rows"]
    probe = _MemoryProbe()
    reset_peak_rss()
    before = status_kib("VmRSS")  # before the model is built: Python and the libraries
    _train(row, spec, spec["memory_steps"], Clock(torch.device("cpu")), [probe])
    kib = 1024 / MIB
    return {
        "row": row,
        "before_model_mib": before * kib,
        "fit_peak_mib": max(probe.setup_peak, probe.train_peak) * kib,
        "train_start_mib": probe.train_start * kib,
        "train_peak_mib": probe.train_peak * kib,
    }


def child(folder: Path) -> None:
    """One rank of the run of ``folder/spec.json``: its times or peak memory to ``folder/rank<r>.json``."""
    spec = json.loads((folder / "spec.json").read_text())
    os.environ["OMP_NUM_THREADS"] = str(spec["threads"])  # Lightning keeps it (else it picks its own)
    torch.set_num_threads(spec["threads"])
    result = _time_rows(spec) if spec["mode"] == "time" else _memory_row(spec)
    rank = torch.distributed.get_rank()
    result.update(rank=rank, threads=torch.get_num_threads())
    path = folder / f"rank{rank}.json"
    path.with_suffix(".tmp").write_text(json.dumps(result))
    path.with_suffix(".tmp").rename(path)  # whole or absent: the parent reads it when the run ends


def _rank_main(folder: str, env: dict[str, str]) -> None:
    """A forked rank: torchrun's variables, stderr to ``rank<r>.err`` (rank 0's stdout goes through)."""
    os.environ.update(env)
    with open(Path(folder) / f"rank{env['LOCAL_RANK']}.err", "w") as log:
        os.dup2(log.fileno(), 2)
    if env["LOCAL_RANK"] != "0":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (this process ends with the run)
    quiet_libraries()
    child(Path(folder))


def _launch(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run ``spec`` in ``spec['processes']`` fresh processes; every rank's result, by rank.

    The ranks are forked from a ``forkserver`` that has imported torch, Lightning, transformers and
    peft once (no rank re-imports them, and none inherits a thread pool that already ran, which
    OpenMP does not survive), with torchrun's variables set (``LOCAL_RANK``, ``WORLD_SIZE``,
    ``MASTER_*``), so Lightning starts no process itself. A failed rank ends the others (they would
    wait for it in their next collective); its stderr's last line is the error.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lit_bar.experiments.benchmark.distributed", "transformers", "peft"])
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "NODE_RANK": "0"}
    env["WORLD_SIZE"] = str(spec["processes"])
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "spec.json").write_text(json.dumps(spec))
        procs = [
            context.Process(target=_rank_main, args=(name, {**env, "LOCAL_RANK": str(r)}))
            for r in range(spec["processes"])
        ]
        for proc in procs:
            proc.start()
        failed = _wait_all(procs)
        paths = [folder / f"rank{r}.json" for r in range(spec["processes"])]
        if failed is not None or not all(p.exists() for p in paths):
            rank = failed or 0
            tail = ((folder / f"rank{rank}.err").read_text().strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(
                f"distributed {spec['mode']} run of {spec['rows']} failed (rank {rank}): {tail}"
            )
        return [json.loads(p.read_text()) for p in paths]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_all(procs: list[Any]) -> int | None:
    """Wait for every process; at the first that fails, end the rest. The failed one's rank, or None."""
    while True:
        codes = [p.exitcode for p in procs]
        failed = next((r for r, code in enumerate(codes) if code not in (None, 0)), None)
        if failed is not None:
            for proc in procs:
                proc.kill()
                proc.join()
            return failed
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.2)


def _merge(ranks: list[dict[str, Any]], rows: list[str]) -> dict[str, dict[str, list[list[float]]]]:
    """One time per step from the ranks': the longest wall time, the sum of the CPU times."""
    merged: dict[str, dict[str, list[list[float]]]] = {"wall": {}, "cpu": {}}
    for clock, combine in (("wall", max), ("cpu", sum)):
        for row in rows:
            per_rank = [rank["times"][clock][row] for rank in ranks]
            merged[clock][row] = [
                [combine(step) for step in zip(*rounds, strict=True)]
                for rounds in zip(*per_rank, strict=True)
            ]
    return merged


def measure(args: Any) -> dict[str, Any]:
    """The distributed rows of ``args``: step times (merged and per rank) and peak memory per process."""
    rows = row_names(args.strategies, args.distributed_methods)
    spec = {
        "rows": rows,
        "model": args.model,
        "batch": args.batch,
        "length": args.length,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "memory_steps": args.memory_steps,
        "processes": args.processes,
        "threads": args.threads or max(1, (os.cpu_count() or 1) // args.processes),
    }
    print(
        f"timing {rows} on {args.processes} CPU processes, {args.rounds} rounds × {args.steps} steps",
        flush=True,
    )
    ranks = _launch({**spec, "mode": "time"})
    memory = []
    for row in (r for r in args.memory_rows if r in rows):
        print(f"peak memory of {row} in a fresh run of {args.processes} processes ...", flush=True)
        try:
            memory.append({"row": row, "per_rank": _launch({**spec, "mode": "memory", "rows": [row]})})
        except RuntimeError as error:
            memory.append({"row": row, "error": str(error)})
        print(f"  {memory[-1]}", flush=True)
    meta = {
        **{
            k: spec[k] for k in ("processes", "threads", "batch", "rounds", "steps", "warmup", "memory_steps")
        },
        "threads_per_process": ranks[0]["threads"],
        "batch_per_process": args.batch // args.processes,
        "device": "cpu (gloo)",
        "time_measure": "wall: the longest of the processes' windows; CPU: the sum over the processes",
        "memory_measure": "VmHWM (peak resident set) per process: from building the model to the end of fit, "
        "and over the training steps",
    }
    meta["all_parameters_sharded"] = {row: all(r["sharded"][row] for r in ranks) for row in rows}
    per_rank = {r["rank"]: r["times"] for r in ranks}
    return {"meta": meta, "times": _merge(ranks, rows), "per_rank_times": per_rank, "memory": memory}
