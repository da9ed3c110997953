"""Count the operations that would stop the host for the GPU, and say who issued each one.

A training step on a GPU should queue kernels and never wait for them. These aten operations make
the host wait (a *sync*), on every device where they are not free:

* ``_local_scalar_dense`` (``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``), and
  ``is_nonzero``/``item``/``equal``/``allclose``, which return Python values;
* ``nonzero`` (``torch.where(cond)``, ``argwhere``), ``masked_select``, ``unique`` and
  ``repeat_interleave`` without ``output_size``, ``bincount``: outputs whose size depends on values;
* ``index``/``index_put`` with a boolean (or uint8) index: ``x[mask]``, ``x[mask] = v``.

Besides these, a tensor built from Python data (``torch.tensor(...)``, ``torch.as_tensor(list)``:
``aten.lift_fresh``) is a host-to-device copy when it targets a GPU, and a copy between a CPU and
an accelerator is one too: both are counted as ``"host_copy"``. On a CPU-only run every tensor is
on the CPU, so a ``lift_fresh`` is the only trace such a copy leaves.

:class:`SyncCounter` is a ``TorchDispatchMode``: it sees every aten call made while it is active
(forward and backward) and charges each sync to the innermost Python frame that issued it, skipping
torch's own dispatch plumbing. The frame's file gives the *owner*: ``"lit_bar"`` for this package,
the top-level package name for installed libraries (``torch`` for the optimizers' CPU step counters,
``transformers`` for its SDPA mask check ``padding_mask.all()``, ``lightning`` for logging), and
``"other"`` for anything else (scripts, tests). An op run by the autograd engine during backward
has no Python frame of its own: with ``trace_backward=True`` (anomaly mode without its NaN check)
it is charged to the forward line that created the autograd node, otherwise to ``"autograd"``.

Example::

    with SyncCounter() as counter:
        loss = module.compute_loss(batch)
        loss.backward()
    assert not counter.charged_to("lit_bar"), counter.report()
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "HOST_COPY_OPS",
    "HOST_SIDE_FUNCTIONS",
    "SYNC_OPS",
    "SyncCounter",
    "SyncSite",
    "issuing_site",
    "owner_of",
]

_aten = torch.ops.aten

#: Ops that always make the host wait for the device (their result is a host value or a value-sized tensor).
SYNC_OPS = frozenset(
    {
        _aten._local_scalar_dense.default,
        _aten.item.default,
        _aten.is_nonzero.default,
        _aten.equal.default,
        _aten.allclose.default,
        _aten.nonzero.default,
        _aten.masked_select.default,
        _aten._unique2.default,
        _aten.unique_dim.default,
        _aten.unique_consecutive.default,
        _aten.bincount.default,
    }
)
_BOOL_INDEX_OPS = frozenset(
    {
        _aten.index.Tensor,
        _aten.index_put.default,
        _aten.index_put_.default,
        _aten._index_put_impl_.default,
    }
)
_COPY_OPS = frozenset({_aten._to_copy.default, _aten.copy_.default})
#: Ops that build a tensor from host data: a host-to-device copy when the step runs on a GPU.
HOST_COPY_OPS = frozenset({_aten.lift_fresh.default, _aten.lift_fresh_copy.default})

_PACKAGE_DIR = str(Path(__file__).resolve().parents[1]) + "/"  # lit_bar/, above algorithms/
_THIS_FILE = str(Path(__file__).resolve())
# Files that only forward a call into aten: a sync "issued" there was issued by their caller.
_PLUMBING = (
    "torch/utils/_python_dispatch.py",
    "torch/_dynamo/eval_frame.py",
    "torch/_compile.py",
    "torch/_ops.py",
    "torch/_tensor.py",
    "torch/functional.py",
    "torch/overrides.py",
    "torch/_jit_internal.py",
    "torch/utils/_contextlib.py",
    "torch/autograd/__init__.py",
    "torch/autograd/graph.py",
    "torch/autograd/grad_mode.py",
    "contextlib.py",
    "/warnings.py",
)
_SITE_DIRS = ("site-packages/", "dist-packages/")
_OWNER_ALIASES = {"lightning_fabric": "lightning", "pytorch_lightning": "lightning"}
#: Lightning hooks that run on the host-side batch before it moves to the device: their ops never wait.
HOST_SIDE_FUNCTIONS = frozenset({"on_before_batch_transfer"})
_TRACEBACK_LINE = re.compile(r'File "(?P<file>.+)", line (?P<line>\d+), in (?P<function>.+)')


@dataclass(frozen=True)
class SyncSite:
    """One counted op and where it came from.

    Attributes:
        op: The aten overload, e.g. ``"aten._local_scalar_dense.default"``.
        kind: ``"sync"`` (the host waits for the device), ``"host_copy"`` (a host-to-device copy), or
            ``"host_side"``: one of those ops issued inside a hook that works on the host-side batch
            before it moves (:data:`HOST_SIDE_FUNCTIONS`), which costs no device wait.
        owner: ``"lit_bar"``, a library's top-level package (``"torch"``, ``"transformers"``, ...),
            ``"autograd"`` (a backward op, ``trace_backward=False``) or ``"other"``.
        file: The issuing frame's file.
        line: Its line number.
        function: Its function (for backward ops without a trace: the autograd node's name).
        phase: :attr:`SyncCounter.phase` when the op ran (e.g. ``"step 2"``).
        lit_bar_frame: ``file:line`` of the innermost lit_bar frame on the stack when the issuer is
            not lit_bar itself (lit_bar called the library that synced); ``None`` otherwise.
        stack: ``file:line (function)`` of the frames, innermost first (``keep_stacks=True`` only).
    """

    op: str
    kind: str
    owner: str
    file: str
    line: int
    function: str
    phase: str
    lit_bar_frame: str | None = None
    stack: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def where(self) -> str:
        """``file:line (function)``, the file shortened to its package-relative path."""
        return f"{_short(self.file)}:{self.line} ({self.function})"


def owner_of(filename: str) -> str:
    """``"lit_bar"`` for this package's files, a library's top-level package name, else ``"other"``."""
    path = filename.replace("\\", "/")
    if path.startswith(_PACKAGE_DIR):
        return "lit_bar"
    for marker in _SITE_DIRS:
        if marker in path:
            top = path.split(marker, 1)[1].split("/", 1)[0].removesuffix(".py")
            return _OWNER_ALIASES.get(top, top)
    if "/lib/python3" in path and "/site-packages/" not in path:
        return "python"
    return "other"


def _is_plumbing(filename: str) -> bool:
    path = filename.replace("\\", "/")
    return path == _THIS_FILE or any(path.endswith(p) for p in _PLUMBING)


def _short(filename: str) -> str:
    path = filename.replace("\\", "/")
    if path.startswith(_PACKAGE_DIR):
        return "lit_bar/" + path[len(_PACKAGE_DIR) :]
    for marker in _SITE_DIRS:
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def issuing_site(frames: Iterable[tuple[str, int, str]]) -> tuple[tuple[str, int, str], str | None]:
    """The innermost non-plumbing frame of ``frames`` (innermost first), and the innermost lit_bar frame.

    Args:
        frames: ``(file, line, function)`` from the innermost frame outwards.

    Returns:
        The issuing ``(file, line, function)`` and, when it is not lit_bar's, ``"file:line"`` of the
        innermost lit_bar frame further out (``None`` if there is none).
    """
    issuer = None
    for file, line, function in frames:
        if issuer is None:
            if not _is_plumbing(file):
                issuer = (file, line, function)
                if owner_of(file) == "lit_bar":
                    return issuer, None
            continue
        if owner_of(file) == "lit_bar" and not _is_plumbing(file):
            return issuer, f"{_short(file)}:{line}"
    return issuer or ("<unknown>", 0, "<unknown>"), None


def _python_frames(frame: FrameType | None) -> Iterable[tuple[str, int, str]]:
    while frame is not None:
        yield frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name
        frame = frame.f_back


def _traceback_frames(lines: list[str]) -> list[tuple[str, int, str]]:
    """``(file, line, function)`` innermost first, from ``traceback.format_stack`` lines."""
    frames = []
    for text in lines:
        match = _TRACEBACK_LINE.search(text)
        if match:
            frames.append((match["file"], int(match["line"]), match["function"].strip()))
    return frames[::-1]


def _is_bool_index(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _crosses_devices(func: Any, args: tuple, kwargs: dict) -> bool:
    """A copy between the CPU and an accelerator (on a CPU-only run there is none)."""
    if func is _aten._to_copy.default:
        source, target = args[0].device, kwargs.get("device")
    else:
        source, target = args[1].device, args[0].device
    return target is not None and (torch.device(source).type == "cpu") != (torch.device(target).type == "cpu")


def classify(func: Any, args: tuple, kwargs: dict) -> str | None:
    """``"sync"``, ``"host_copy"`` or ``None`` for one aten call."""
    if func in SYNC_OPS:
        return "sync"
    if func in _BOOL_INDEX_OPS and _is_bool_index(args[1]):
        return "sync"
    if func is _aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "sync"
    if func in HOST_COPY_OPS:
        return "host_copy"
    if func in _COPY_OPS and _crosses_devices(func, args, kwargs):
        return "host_copy"
    return None


class SyncCounter(TorchDispatchMode):
    """A dispatch mode recording every syncing op (and host copy) with its issuing frame.

    Args:
        trace_backward: Charge ops run by autograd's backward to the forward line that created their
            node (turns on anomaly mode with ``check_nan=False`` while active: slower, for tests).
        host_copies: Also record ``"host_copy"`` ops (tensors built from Python data, CPU↔device copies).
        keep_stacks: Keep every record's whole Python stack (:attr:`SyncSite.stack`), for debugging.

    Attributes:
        records: Every recorded :class:`SyncSite`, in order.
        phase: A label stamped on the records from now on (set it per training step).
    """

    def __init__(
        self, trace_backward: bool = False, host_copies: bool = True, keep_stacks: bool = False
    ) -> None:
        super().__init__()
        self.trace_backward = trace_backward
        self.host_copies = host_copies
        self.keep_stacks = keep_stacks
        self.records: list[SyncSite] = []
        self.phase = ""
        self._anomaly: Any = None

    def __enter__(self) -> SyncCounter:
        if self.trace_backward:
            self._anomaly = torch.autograd.set_detect_anomaly(True, check_nan=False)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self._anomaly is not None:
                self._anomaly.__exit__(*exc)
                self._anomaly = None

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        kind = classify(func, args, kwargs)
        if kind == "sync" or (kind == "host_copy" and self.host_copies):
            self.records.append(self._site(str(func), kind))
        return func(*args, **kwargs)

    def _site(self, op: str, kind: str) -> SyncSite:
        node = torch._C._current_autograd_node()
        if node is not None:  # run by autograd's backward: no Python frame issued it
            lines = node.metadata.get("traceback_") if self.trace_backward else None
            if not lines:
                return SyncSite(op, kind, "autograd", "<backward>", 0, node.name(), self.phase)
            frames: list[tuple[str, int, str]] = _traceback_frames(lines)
        else:
            frames = list(_python_frames(sys._getframe(2)))
        (file, line, function), lit_bar_frame = issuing_site(frames)
        if any(name in HOST_SIDE_FUNCTIONS for _, _, name in frames):
            kind = "host_side"
        stack = tuple(f"{_short(f)}:{n} ({fn})" for f, n, fn in frames) if self.keep_stacks else ()
        return SyncSite(op, kind, owner_of(file), file, line, function, self.phase, lit_bar_frame, stack)

    # ------------------------------------------------------------------ reading the records
    def charged_to(self, owner: str, kind: str = "sync", phase: str | None = None) -> list[SyncSite]:
        """The records of ``owner`` (``"lit_bar"``, ``"torch"``, ...) of one kind, optionally one phase."""
        return [
            r
            for r in self.records
            if r.owner == owner and r.kind == kind and (phase is None or r.phase == phase)
        ]

    def counts(self, kind: str = "sync", phase: str | None = None) -> dict[str, int]:
        """Number of records of ``kind`` per owner."""
        return dict(Counter(r.owner for r in self.records if r.kind == kind and phase in (None, r.phase)))

    def report(self, phase: str | None = None) -> str:
        """A readable table: count, kind, owner, op and site of each distinct (site, op)."""
        rows = Counter(
            (r.kind, r.owner, r.op, r.where, r.lit_bar_frame)
            for r in self.records
            if phase in (None, r.phase)
        )
        if not rows:
            return "no syncs and no host copies"
        lines = []
        for (kind, owner, op, where, via), count in sorted(rows.items(), key=lambda kv: (kv[0][1], -kv[1])):
            called = f"  [called from {via}]" if via else ""
            lines.append(f"{count:5d}  {kind:9s}  {owner:12s}  {op:40s}  {where}{called}")
        return "\n".join(lines)
