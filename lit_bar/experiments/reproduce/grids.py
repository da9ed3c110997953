"""The named grids of ``scripts/reproduce.py``: tasks (config files) × methods × seeds, and the
search on dev that picks each method's hyperparameters.

``offline`` runs on this machine; ``table1``/``table3``/``table4``/``table5`` are the README's
paper-cell commands (``configs/{fewshot,opt,glue,gpt2}``) over the paper's seeds. The paper names
its seeds only for the few-shot protocol (LM-BFF: 13, 21, 42, 87, 100); for the others it says
"three random trials", taken here as seeds 0, 1, 2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = [
    "FLAGS",
    "GRIDS",
    "METHOD_NAMES",
    "PER_PAIR_METHODS",
    "Cell",
    "Grid",
    "Search",
    "Task",
    "chosen_hparams",
    "dev_metric",
    "final_cells",
    "row_key",
    "search_cells",
    "select",
]

#: Row labels, in the paper's order (Tables 1, 3, 4, 5).
METHOD_NAMES = {
    "lora": "LoRA",
    "sam": "LoRA-SAM",
    "obar": "LoRA-oBAR",
    "nbar": "LoRA-nBAR",
    "fsam": "LoRA-FSAM",
    "psam": "LoRA-PSAM",
    "flatlora": "Flat-LoRA",
    "bilora": "Bi-LoRA",
}
PAPER_METHODS = ("lora", "sam", "obar", "nbar")


@dataclass(frozen=True)
class Task:
    """One column: a task config, its local data folder under ``--data-root`` ("" = hub), its metric."""

    name: str
    config: str
    data: str = ""
    metric: str | None = None  # None: the first test metric that is not a loss


#: The hyperparameters a search sets, by short name: the ``lit-bar`` flag each one becomes. ``mu`` and
#: ``schedule`` go to the last callback of the list, which is the method file's BalancednessCallback.
FLAGS = {
    "lr": "model.init_args.optimizer.init_args.lr",
    "rho": "model.init_args.rho",
    "mu": "trainer.callbacks.init_args.mu",
    "schedule": "trainer.callbacks.init_args.schedule",
    # Flat-LoRA's noise scale σ / Bi-LoRA's radius: their method files put that callback last
    "successor_rho": "trainer.callbacks.init_args.rho",
}
#: Methods whose method file ends with a balancedness callback (BalancednessMonitor/-Callback), which
#: takes ``log_per_pair``; the successors' files end with their own callback.
PER_PAIR_METHODS = ("lora", "sam", "nbar", "obar", "fsam", "psam")


@dataclass(frozen=True)
class Cell:
    """One run: task × method × seed, with the hyperparameters set over the files' (``(name, value)``)."""

    task: str
    method: str
    seed: int
    task_config: str
    data: str = ""
    hparams: tuple[tuple[str, float | str], ...] = ()

    @property
    def tag(self) -> str:
        """``lr=0.001,rho=0.05``: the hyperparameters in a folder name ("" when none are set)."""
        return ",".join(f"{name}={value}" for name, value in self.hparams)

    @property
    def key(self) -> tuple:
        """What identifies a run in ``runs.jsonl``."""
        return (self.task, self.method, self.seed, self.tag)

    @property
    def key_path(self) -> str:
        """``task/method[/tag]/seedS``: the run's folder under ``OUT/logs``."""
        middle = f"/{self.tag}" if self.hparams else ""
        return f"{self.task}/{self.method}{middle}/seed{self.seed}"


@dataclass(frozen=True)
class Search:
    """The paper's selection on a dev split (its Appendix D): LoRA's learning rate first, then, at
    that rate, each method's own knobs; every candidate trained once, with ``seed``; the best dev metric
    wins (ties: the earlier candidate). The final runs then use the grid's seeds.

    ``spaces`` maps a method to its candidates (tuples of ``(name, value)``, names from :data:`FLAGS`);
    a method without an entry runs at the selected rate alone.
    """

    lrs: tuple[float, ...]
    spaces: tuple[tuple[str, tuple[tuple[tuple[str, float | str], ...], ...]], ...]
    seed: int

    def space(self, method: str) -> tuple[tuple[tuple[str, float | str], ...], ...]:
        """``method``'s candidates; one empty candidate (the selected rate alone) when it has none."""
        return dict(self.spaces).get(method, ((),))


@dataclass(frozen=True)
class Grid:
    """A named grid; ``cells()`` is seed-major, so a partial grid holds whole seeds first."""

    name: str
    title: str
    tasks: tuple[Task, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    offline: bool = False
    search: Search | None = None  # None: run the files' hyperparameters as they are
    sharpness: bool = False  # measure the final weights' sharpness in `lit-bar test`

    def cells(self) -> list[Cell]:
        """Every (seed, task, method) at the files' hyperparameters, seed-major."""
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
_BAR_SPACE = tuple((("mu", mu), ("schedule", h)) for h in ("linear", "cosine") for mu in (0.5, 1.0, 2.0))
#: Seed 001's grids (Appendix D) over this machine's model: ρ ∈ {0.05, 0.1, 0.2} plus 0.01 (Flat-LoRA
#: and Bi-LoRA found ρ ≤ 0.01 best over LoRA's parameters), μ ∈ {0.5, 1, 2} × {linear, cosine}.
TUNED_SEARCH = Search(
    lrs=(1e-3, 2e-3, 4e-3),
    spaces=(
        ("sam", tuple((("rho", rho),) for rho in (0.01, 0.05, 0.1, 0.2))),
        ("nbar", _BAR_SPACE),
        ("obar", _BAR_SPACE),
        # the papers' own values: Flat-LoRA σ 0.05 / 0.10 (Sec. 4.1, App. D), Bi-LoRA ρ 0.05 / 0.1 (App. R)
        ("flatlora", ((("successor_rho", 0.05),), (("successor_rho", 0.1),))),
        ("bilora", ((("successor_rho", 0.05),), (("successor_rho", 0.1),))),
    ),
    seed=13,
)
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
    "offline-tuned": Grid(
        "offline-tuned",
        "Tuned offline grid: all-MiniLM-L6-v2 + LoRA (r=8) on CPU, 300 steps; SST-2 and STS-B (test "
        "splits), CB (official validation split); lr, ρ, μ and the successors' radii selected on dev",
        (
            Task("sst2", "configs/offline_tuned/minilm_sst2.yaml", "sst2", _ACC),
            Task("stsb", "configs/offline_tuned/minilm_stsb.yaml", "stsb", "test/pearson"),
            Task("cb", "configs/offline_tuned/minilm_cb.yaml", "cb", _ACC),
        ),
        ("lora", "sam", "nbar", "obar", "flatlora", "bilora"),
        (13, 21, 42, 87, 100),
        offline=True,
        search=TUNED_SEARCH,
        sharpness=True,
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


# ----------------------------------------------------------------------------- the search's logic
def row_key(row: dict) -> tuple:
    """A ``runs.jsonl`` row's :attr:`Cell.key`."""
    hparams = tuple(map(tuple, row.get("hparams", ())))
    return Cell(row["task"], row["method"], row["seed"], "", hparams=hparams).key


def dev_metric(task: Task) -> str:
    """The dev-split name of a task's test metric (``test/accuracy`` → ``val/accuracy``)."""
    return "val/" + (task.metric or "test/accuracy").split("/")[-1]


def search_cells(grid: Grid, chosen: dict[tuple[str, str], tuple]) -> list[Cell]:
    """The search's cells: LoRA's learning rates when ``chosen`` has no rate for a task yet, else every
    other method's candidates at the chosen rate.

    Method-major (every task's SAM candidates, then nBAR's, ...), so that an interrupted search has
    finished whole methods."""
    search, cells = grid.search, []
    pending = [t for t in grid.tasks if (t.name, "lora") not in chosen]
    for t in pending:
        cells += [Cell(t.name, "lora", search.seed, t.config, t.data, (("lr", v),)) for v in search.lrs]
    for method in grid.methods[1:]:
        for t in grid.tasks:
            if t not in pending:
                lr = chosen[(t.name, "lora")]
                cells += [
                    Cell(t.name, method, search.seed, t.config, t.data, (*lr, *hp))
                    for hp in search.space(method)
                ]
    return cells


def select(grid: Grid, rows: list[dict], cells: list[Cell], task: str, method: str) -> tuple:
    """The hyperparameters of the candidate with the best dev metric (ties: the earlier candidate)."""
    column = next(t for t in grid.tasks if t.name == task)
    scores = {
        row_key(r): r.get("dev_metrics", {}).get(dev_metric(column))
        for r in rows
        if r.get("grid") == grid.name and r.get("status") == "ok"
    }
    candidates = [c for c in cells if (c.task, c.method) == (task, method)]
    scored = [(scores[c.key], -i, c) for i, c in enumerate(candidates) if scores.get(c.key) is not None]
    if not scored:
        raise SystemExit(
            f"reproduce.py: error: no candidate of {method} on {task} finished with a dev metric "
            f"{dev_metric(column)!r}; see its failed rows in runs.jsonl and their stdout.log"
        )
    return max(scored, key=lambda s: s[:2])[2].hparams


def chosen_hparams(grid: Grid, rows: list[dict]) -> dict[tuple[str, str], tuple]:
    """What the search chose so far, per (task, method): only where every candidate has an ``ok`` row."""
    done = {row_key(r) for r in rows if r.get("grid") == grid.name and r.get("status") == "ok"}
    chosen: dict[tuple[str, str], tuple] = {}
    for stage in (0, 1):
        cells = search_cells(grid, chosen)
        for t in grid.tasks:
            for m in grid.methods if stage else ("lora",):
                mine = [c for c in cells if (c.task, c.method) == (t.name, m)]
                if mine and all(c.key in done for c in mine):
                    chosen[(t.name, m)] = select(grid, rows, mine, t.name, m)
    return chosen


def final_cells(grid: Grid, chosen: dict[tuple[str, str], tuple]) -> list[Cell]:
    """Seed-major final cells at the chosen hyperparameters (pairs not chosen yet are left out)."""
    return [
        Cell(t.name, m, seed, t.config, t.data, chosen[(t.name, m)])
        for seed in grid.seeds
        for t in grid.tasks
        for m in grid.methods
        if (t.name, m) in chosen
    ]
