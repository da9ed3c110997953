"""The named grids of ``scripts/reproduce.py``: tasks (config files) × methods × seeds.

``offline`` runs on this machine; ``table1``/``table3``/``table4``/``table5`` are the README's
paper-cell commands (``configs/{fewshot,opt,glue,gpt2}``) over the paper's seeds. The paper names
its seeds only for the few-shot protocol (LM-BFF: 13, 21, 42, 87, 100); for the others it says
"three random trials", taken here as seeds 0, 1, 2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["GRIDS", "METHOD_NAMES", "Cell", "Grid", "Task"]

#: Row labels, in the paper's order (Tables 1, 3, 4, 5).
METHOD_NAMES = {
    "lora": "LoRA",
    "sam": "LoRA-SAM",
    "obar": "LoRA-oBAR",
    "nbar": "LoRA-nBAR",
    "fsam": "LoRA-FSAM",
    "psam": "LoRA-PSAM",
}
PAPER_METHODS = ("lora", "sam", "obar", "nbar")


@dataclass(frozen=True)
class Task:
    """One column: a task config, its local data folder under ``--data-root`` ("" = hub), its metric."""

    name: str
    config: str
    data: str = ""
    metric: str | None = None  # None: the first test metric that is not a loss


@dataclass(frozen=True)
class Cell:
    """One run: task × method × seed."""

    task: str
    method: str
    seed: int
    task_config: str
    data: str = ""

    @property
    def key_path(self) -> str:
        return f"{self.task}/{self.method}/seed{self.seed}"


@dataclass(frozen=True)
class Grid:
    """A named grid; ``cells()`` is seed-major, so a partial grid holds whole seeds first."""

    name: str
    title: str
    tasks: tuple[Task, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    offline: bool = False

    def cells(self) -> list[Cell]:
        return [
            Cell(task.name, method, seed, task.config, task.data)
            for seed in self.seeds
            for task in self.tasks
            for method in self.methods
        ]

    def select(self, tasks=None, methods=None, seeds=None) -> Grid:
        """A sub-grid; ``ValueError`` naming a task or method the grid does not have."""
        names = [t.name for t in self.tasks]
        for wanted, have, what in ((tasks, names, "task"), (methods, self.methods, "method")):
            unknown = sorted(set(wanted or []) - set(have))
            if unknown:
                raise SystemExit(
                    f"reproduce.py: error: grid {self.name!r} has no {what} {unknown}; it has {list(have)}"
                )
        return replace(
            self,
            tasks=tuple(t for t in self.tasks if not tasks or t.name in tasks),
            methods=tuple(m for m in self.methods if not methods or m in methods),
            seeds=tuple(seeds) if seeds else self.seeds,
        )


def _paper(name: str, title: str, folder: str, model: str, tasks: dict[str, str | None], seeds) -> Grid:
    columns = tuple(Task(t, f"configs/{folder}/{model}_{t}.yaml", metric=m) for t, m in tasks.items())
    return Grid(name, title, columns, PAPER_METHODS, tuple(seeds))


_ACC = "test/accuracy"
GRIDS = {
    "offline": Grid(
        "offline",
        "Offline grid: all-MiniLM-L6-v2 + LoRA (r=8) on CPU; SST-2 32-shot (test split), RTE and CB "
        "(official validation split)",
        (
            Task("sst2-32shot", "configs/offline/minilm_sst2_32shot.yaml", "sst2", _ACC),
            Task("rte", "configs/offline/minilm_rte.yaml", "rte", _ACC),
            Task("cb", "configs/offline/minilm_cb.yaml", "cb", _ACC),
        ),
        ("lora", "sam", "nbar", "obar"),
        (13, 21, 42),
        offline=True,
    ),
    "table1": _paper(
        "table1", "Table 1: RoBERTa-large, few-shot (k = 512)", "fewshot", "roberta-large",
        dict.fromkeys(["sst2", "sst5", "snli", "mnli", "rte", "trec"], _ACC), (13, 21, 42, 87, 100),
    ),
    "table3": _paper(
        "table3", "Table 3: OPT-1.3B, MeZO protocol", "opt", "opt-1.3b",
        {"sst2": _ACC, "cb": _ACC, "rte": _ACC, "copa": _ACC, "record": None, "squad": None}, (0, 1, 2),
    ),
    "table4": _paper(
        "table4", "Table 4: RoBERTa-large, GLUE", "glue", "roberta-large",
        dict.fromkeys(["sst2", "stsb", "rte", "qqp", "qnli", "mrpc", "mnli", "cola"]), (0, 1, 2),
    ),
    "table5": _paper(
        "table5", "Table 5: GPT-2 medium, WebNLG", "gpt2", "gpt2-medium", {"webnlg": None}, (0, 1, 2),
    ),
}  # fmt: skip
