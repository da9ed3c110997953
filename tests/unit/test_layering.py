"""The package's layering, enforced: no import cycle, no upward import, framework-free algorithms.

The layers, lowest first (:data:`LAYERS`). A module may import modules of its own layer or of a lower
one, never of a higher one; ``lit_bar`` modules never import each other in a circle; and the
algorithm and engine layers import only the standard library, torch and typing_extensions
(:data:`ALGORITHM_ALLOWED`): no lightning, transformers, torchmetrics, datasets or numpy, and peft
only inside a function of the modules in :data:`PEFT_INSIDE_FUNCTIONS` (to recognise peft's LoRA
layers), so importing them loads no framework (checked in a fresh interpreter too). Lightning's
private attributes appear only in ``lit_bar/lightning/compat.py``.

=========== =================================================================================
layer       what lives there
=========== =================================================================================
algorithms  the update rules and their measurements in plain torch (pairs, BAR, SAM optimizers,
            Flat-LoRA / Bi-LoRA, the step's pieces, sync counting, sharpness)
engine      the SAM step, with the framework passed in (``lit_bar.engine``)
support     helpers any front end may use: run length, resume state, checkpoint files, the one
            home of Lightning's private attributes, schedules, hub access, GPT-2 q/k/v surgery
front ends  Lightning (``SAMModule``, callbacks), transformers (``lit_bar.hf``)
tasks       the task modules, data modules and toy problems built on the front ends
artifacts   what a run leaves behind (``lit_bar.export``, the ``AdapterExport`` callback)
entry       the package facades (``lit_bar``, ``lit_bar.callbacks``) and the ``lit-bar`` command
experiments grids, tables, figures, benchmark rows and studies (``lit_bar.experiments``), which
            ``scripts/`` call
=========== =================================================================================

"Import" means every ``import`` / ``from ... import`` anywhere in the file (module top, inside a
function, under ``if TYPE_CHECKING``), relative ones resolved, plus string constants that name a
``lit_bar`` module (the lazy ``_LAZY`` maps of the package ``__init__`` files). A package's
``__init__`` is its own node (``lit_bar.callbacks``); importing a submodule draws an edge to the
submodule only. A new module is placed by the longest entry of :data:`LAYERS` that covers it; a
module no entry covers fails :func:`test_every_module_has_a_layer`, so a new top-level module is
placed on purpose.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lit_bar"

#: (layer, entries), lowest layer first. ``"x.*"`` covers x's submodules, ``"x"`` the module (or the
#: package ``__init__``) x itself; the longest covering entry decides.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "algorithms",
        [
            "lit_bar.algorithms",
            "lit_bar.algorithms.*",
            "lit_bar.optim",
            "lit_bar.optim.*",
            "lit_bar.methods",
            "lit_bar.methods.*",
            "lit_bar.sharpness",
            "lit_bar.sharpness.*",
        ],
    ),
    ("engine", ["lit_bar.engine", "lit_bar.engine.*"]),
    (
        "support",
        [
            "lit_bar.io",
            "lit_bar.io.*",
            "lit_bar.lightning",
            "lit_bar.lightning.steps",
            "lit_bar.lightning.resume",
            "lit_bar.lightning.compat",
            "lit_bar.lightning.schedules",
            "lit_bar.cli.quiet",
            "lit_bar.cli.errors",
        ],
    ),
    (
        "front ends",
        [
            "lit_bar.lightning.*",
            "lit_bar.callbacks.*",
            "lit_bar.hf",
            "lit_bar.hf.*",
        ],
    ),
    (
        "tasks",
        [
            "lit_bar.tasks",
            "lit_bar.tasks.*",
            "lit_bar.data",
            "lit_bar.data.*",
            "lit_bar.toy",
            "lit_bar.toy.*",
        ],
    ),
    ("artifacts", ["lit_bar.export", "lit_bar.callbacks.export"]),
    (
        "entry",
        [
            "lit_bar",
            "lit_bar._moved",
            "lit_bar.callbacks",
            "lit_bar.cli",
            "lit_bar.cli.__main__",
            "lit_bar.console",
        ],
    ),
    ("experiments", ["lit_bar.experiments", "lit_bar.experiments.*"]),
]

#: The layers whose modules import no framework.
FRAMEWORK_FREE = ("algorithms", "engine")
#: What those modules may import besides ``lit_bar`` modules of their own or a lower layer: the
#: standard library, torch, and typing_extensions (typing back-ports). Nothing else: not lightning
#: (nor lightning_fabric / pytorch_lightning), transformers, torchmetrics, datasets, safetensors,
#: huggingface_hub, numpy.
ALGORITHM_ALLOWED = frozenset(sys.stdlib_module_names) | {"torch", "typing_extensions"}
#: The one exception, by module: peft, imported inside the function that recognises peft's LoRA
#: layers (so importing the module loads no peft, and models without peft never need it).
PEFT_INSIDE_FUNCTIONS = {"lit_bar.algorithms.pairs", "lit_bar.methods.flatlora"}


# --------------------------------------------------------------------- the graph
def module_names(package: Path) -> dict[str, Path]:
    """``{dotted name: file}`` of every module under ``package`` (a package's ``__init__`` is the package)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` refers to (``lit_bar.x.Class`` → ``lit_bar.x``), or None outside lit_bar."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, tree: ast.Module, init: bool, modules: dict[str, Path]) -> dict[str, list[ast.AST]]:
    """``{imported lit_bar module: [import nodes]}`` of the parsed ``tree``; third-party ones under ``""``.

    ``init``: the file is a package's ``__init__`` (relative imports resolve from the package itself).
    """
    package = name if init else name.rpartition(".")[0]
    found: dict[str, list[ast.AST]] = {}

    def add(target: str | None, node: ast.AST) -> None:
        if target is not None and target != name:
            found.setdefault(target, []).append(node)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_known(alias.name, modules) if alias.name.startswith("lit_bar") else "", node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*kept, *([base] if base else [])])
            if base == "__future__":
                continue
            if not base.startswith("lit_bar"):
                add("", node)
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in modules else _known(base, modules), node)
        elif isinstance(node, ast.Constant) and node.value in modules and "." in node.value:
            add(node.value, node)  # lazy import maps: {"Name": "lit_bar.module"}
    return found


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{lit_bar module: the lit_bar modules it imports}`` of the package at ``package``."""
    modules = module_names(package)
    return {
        name: {t for t in imports_of(name, _parse(path), path.name == "__init__.py", modules) if t}
        for name, path in modules.items()
    }


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of the longest entry covering ``module``; None when none does."""
    best: tuple[int, int] | None = None  # (entry length, layer)
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            covers = module.startswith(entry[:-1]) if entry.endswith(".*") else module == entry
            if covers and (best is None or len(entry) > best[0]):
                best = (len(entry), index)
    return None if best is None else best[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for source, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(source) is not None
        and layer_of(target) is not None
        and layer_of(target) > layer_of(source)
    ]


def framework_imports(package: Path = PACKAGE) -> list[str]:
    """Third-party imports of the framework-free layers that :data:`ALGORITHM_ALLOWED` does not allow."""
    modules = module_names(package)
    free = {LAYERS.index(next(layer for layer in LAYERS if layer[0] == n)) for n in FRAMEWORK_FREE}
    bad = []
    for name, path in modules.items():
        if layer_of(name) not in free:
            continue
        tree = _parse(path)
        in_function = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for inner in ast.walk(node)
        }
        for node in imports_of(name, tree, path.name == "__init__.py", modules).get("", []):
            tops = (
                [alias.name.split(".")[0] for alias in node.names]
                if isinstance(node, ast.Import)
                else [(node.module or "").split(".")[0]]
            )
            for top in tops:
                if top in ALGORITHM_ALLOWED:
                    continue
                if top == "peft" and name in PEFT_INSIDE_FUNCTIONS and id(node) in in_function:
                    continue
                bad.append(f"{name} imports {top} (line {node.lineno})")
    return bad


# --------------------------------------------------------------------- the tests
def test_the_scan_sees_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 40
    assert "lit_bar.optim.perturbation" in graph["lit_bar.optim.sam"]  # a top-level import
    assert "lit_bar.lightning.module" in graph["lit_bar"]  # a function-local (lazy) import
    assert "lit_bar.algorithms.pairs" in graph["lit_bar"]  # a lazy map's string


def test_every_module_has_a_layer() -> None:
    unplaced = [name for name in import_graph() if layer_of(name) is None]
    assert not unplaced, (
        f"modules no entry of LAYERS covers (place them in tests/unit/test_layering.py): {unplaced}"
    )


#: What sits at the top of the package beside the layer folders: the facade, the old paths' finder,
#: the console script (instant ``--version``) and the artifacts module.
TOP_LEVEL = {"__init__.py", "_moved.py", "console.py", "export.py"}


def test_the_top_of_the_package_is_folders() -> None:
    loose = sorted(path.name for path in PACKAGE.glob("*.py") if path.name not in TOP_LEVEL)
    assert not loose, f"modules at the top of lit_bar/ (move them to their layer's folder): {loose}"


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_nothing_imports_upward() -> None:
    upward = upward_imports(import_graph())
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_algorithm_and_engine_modules_import_no_framework() -> None:
    bad = framework_imports()
    assert not bad, "framework imports in the algorithm / engine layers:\n" + "\n".join(bad)


def test_importing_the_algorithms_loads_no_framework() -> None:
    """At run time too: importing every algorithm and engine module (package ``__init__`` files
    included) leaves lightning, transformers, peft and torchmetrics unloaded."""
    free = sorted(
        name
        for name in import_graph()
        if layer_of(name) is not None and LAYERS[layer_of(name)][0] in FRAMEWORK_FREE
    )
    assert "lit_bar.engine" in free and "lit_bar.algorithms.bar" in free
    code = (
        "import importlib, sys\n"
        f"for name in {free!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'lightning', 'lightning_fabric', 'pytorch_lightning', 'transformers', 'peft', 'torchmetrics'})\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# --------------------------------------------------------------------- the checks check
def test_the_cycle_search_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize(
    ("source", "target", "upward"),
    [
        ("lit_bar.algorithms.bar", "lit_bar.lightning.module", True),
        ("lit_bar.tasks.base", "lit_bar.export", True),
        ("lit_bar.export", "lit_bar.tasks.lora", False),
        ("lit_bar.callbacks.balancedness", "lit_bar.algorithms.bar", False),
        ("lit_bar.callbacks.balancedness", "lit_bar.callbacks.export", True),
    ],
)
def test_an_upward_import_is_named(source: str, target: str, upward: bool) -> None:
    assert bool(upward_imports({source: {target}})) is upward


# --------------------------------------------------------------------- Lightning's private attributes
#: Lightning's private attributes as lit_bar reached them: ``<trainer-ish object>._name`` and the
#: connectors, loops' and results' internals by name. Only :mod:`lit_bar.lightning.compat` may.
LIGHTNING_PRIVATE = re.compile(
    r"\b(trainer|fit_loop|epoch_loop|loop|loader|fetcher|results|metric|connector)\._[a-z]\w*"
    r"|\.(_logger_connector|_checkpoint_connector|_data_connector|_callback_connector|_accelerator_connector"
    r"|_results|_combined_loader\w*|_data_fetcher|_batches_that_stepped|_forward_cache|_load_state_dicts"
    r"|_active_loop|_should_accumulate)\b"
    r"|[\"']_(results|logger_connector|checkpoint_connector)[\"']"
)
COMPAT = "lightning/compat.py"


def lightning_private_uses(package: Path = PACKAGE) -> list[str]:
    return [
        f"{path.relative_to(package.parent)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.relative_to(package).as_posix() != COMPAT
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if LIGHTNING_PRIVATE.search(line.split("#", 1)[0])
    ]


def test_lightning_private_attributes_only_in_the_compat_module() -> None:
    uses = lightning_private_uses()
    assert not uses, f"Lightning private attributes outside lit_bar/{COMPAT}:\n" + "\n".join(uses)


def test_the_private_attribute_scan_sees_them() -> None:
    compat = (PACKAGE / COMPAT).read_text().splitlines()
    assert sum(bool(LIGHTNING_PRIVATE.search(line.split("#", 1)[0])) for line in compat) >= 5
    assert LIGHTNING_PRIVATE.search("    return bool(trainer._logger_connector.should_update_logs)")
    assert not LIGHTNING_PRIVATE.search("        self._printed_step = trainer.global_step")


# --------------------------------------------------------------------- sizes
#: No module longer than this; the two front-line classes shorter than CLASS_LIMIT.
FILE_LIMIT, CLASS_LIMIT = 400, 250


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > FILE_LIMIT
    }
    assert not long, f"modules over {FILE_LIMIT} lines (split them by concept): {long}"


@pytest.mark.parametrize(
    ("module", "name"), [("lightning/module.py", "SAMModule"), ("engine/core.py", "SAMEngine")]
)
def test_the_step_classes_stay_small(module: str, name: str) -> None:
    tree = ast.parse((PACKAGE / module).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    assert node.end_lineno - node.lineno + 1 < CLASS_LIMIT, f"{name} has grown past {CLASS_LIMIT} lines"
