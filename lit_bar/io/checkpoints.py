"""Checkpoints that are whole or refused: a digest of their contents, atomic writes, one-line errors.

:class:`SafeCheckpointIO` is Lightning's ``TorchCheckpointIO`` with two changes, and ``lit-bar``
uses it unless a run sets a checkpoint plugin of its own (``Trainer(plugins=[SafeCheckpointIO()])``
from Python):

- **save**: the checkpoint gets ``"lit_bar_digest"``, a SHA-256 of every tensor (bytes, dtype,
  shape, place in the checkpoint) and every plain value in it, and is written to a hidden
  ``.<name>.<pid>.<n>.partial`` file in the target folder, flushed to disk, then renamed over the
  target (``os.replace``: atomic on a local file system). A process killed while writing leaves the
  previous checkpoint of that name untouched and no ``*.ckpt`` that is partial; the next save into
  that folder removes ``.partial`` files of processes that are gone. (Lightning's own save, through
  an fsspec transaction, writes the bytes to a file in the system temporary folder and moves it:
  a copy, not a rename, when that folder is on another file system, and the file stays behind
  when the process is killed.)
- **load** (:func:`read_checkpoint`): a missing, empty, truncated or foreign file, or one whose
  contents do not match its digest (a flipped bit), raises :class:`CheckpointError` (a
  ``ValueError``) naming the file and what is wrong; ``lit-bar`` prints it as one line before
  anything is built. Checkpoints without a digest (written by plain Lightning) load as before.

:func:`find_last_checkpoint` is what ``--ckpt_path last`` means in ``lit-bar``: the newest
``*.ckpt`` (by modification time, Lightning's rule for "last") in the run's checkpoint folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import itertools
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from typing_extensions import override

__all__ = [
    "DIGEST_KEY",
    "CheckpointError",
    "SafeCheckpointIO",
    "checkpoint_digest",
    "find_last_checkpoint",
    "read_checkpoint",
    "run_checkpoint_folders",
    "save_atomically",
]

DIGEST_KEY = "lit_bar_digest"
_PLAIN = (int, float, complex, str, bytes, bool, type(None), torch.dtype, torch.device)
_PARTIAL = re.compile(r"^\..+\.(\d+)\.\d+\.partial$")
_COUNTER = itertools.count()
_TORCH_PICKLE_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # torch's legacy format starts so


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


# ----------------------------------------------------------------------------------- the digest


def _tensor_bytes(tensor: torch.Tensor) -> bytes | memoryview:
    tensor = tensor.detach()
    if tensor.is_sparse:
        tensor = tensor.to_dense()
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return b""
    flat = tensor.cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _feed(digest: Any, value: Any, where: str, counts: list[int]) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(f"{where}|tensor|{value.dtype}|{tuple(value.shape)}\n".encode())
        digest.update(_tensor_bytes(value))
        counts[0] += 1
    elif isinstance(value, dict):
        digest.update(f"{where}|dict|{len(value)}\n".encode())
        for key, item in value.items():
            if not (where == "" and key == DIGEST_KEY):
                _feed(digest, item, f"{where}/{key!r}", counts)
    elif isinstance(value, list | tuple):
        digest.update(f"{where}|{type(value).__name__}|{len(value)}\n".encode())
        for i, item in enumerate(value):
            _feed(digest, item, f"{where}/{i}", counts)
    elif isinstance(value, _PLAIN):
        digest.update(f"{where}|{type(value).__name__}|{value!r}\n".encode())
    else:  # an object of its own class: its type only (its repr may hold an address)
        digest.update(f"{where}|{type(value).__module__}.{type(value).__qualname__}\n".encode())


def checkpoint_digest(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``{"algorithm": "sha256", "hexdigest": ..., "tensors": n}`` over everything in ``checkpoint``
    except its own ``DIGEST_KEY`` entry: tensors by their bytes, dtype and shape, plain values by
    value, each with its place (keys and indices) in the checkpoint."""
    digest, counts = hashlib.sha256(), [0]
    _feed(digest, checkpoint, "", counts)
    return {"algorithm": "sha256", "hexdigest": digest.hexdigest(), "tensors": counts[0]}


# ------------------------------------------------------------------------------- atomic writes


def _remove_stale_partials(folder: Path) -> None:
    """Remove ``.partial`` files that processes no longer running left in ``folder``."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _PARTIAL.match(entry.name)
            if match is None or int(match.group(1)) == os.getpid():
                continue
            try:
                os.kill(int(match.group(1)), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            except OSError:  # alive (another user's process): leave it
                pass


def save_atomically(
    checkpoint: Any, path: str | os.PathLike, save: Callable[[Any, Any], None] | None = None
) -> None:
    """``save(checkpoint, file)`` (default ``torch.save``) into a hidden file beside ``path``, flushed
    to disk, then renamed to ``path``: readers see the old file or the new one, never a part."""
    save = save or torch.save
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target.parent)
    partial = target.with_name(f".{target.name}.{os.getpid()}.{next(_COUNTER)}.partial")
    try:
        with open(partial, "xb") as file:
            save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible everywhere)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


# ------------------------------------------------------------------------------------- reading


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    """Why ``torch.load`` failed on ``path``, in words."""
    with open(path, "rb") as file:
        start = file.read(16)
    head, is_zip = start[:4], start[:4] == b"PK\x03\x04"
    refused = isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err)
    if not is_zip and head[:1] != b"\x80":
        what = f"is not a checkpoint: neither a torch zip archive nor a pickle (it starts with {head!r})"
    elif is_zip and not zipfile.is_zipfile(path):
        what = "is truncated: a torch zip archive without its end (a partial write or copy?)"
    elif not is_zip and _TORCH_PICKLE_MAGIC not in start:
        what = "is a Python pickle, not a checkpoint (torch.save writes a zip archive, or a torch pickle)"
    elif refused:
        what = (
            "holds pickled Python objects other than tensors and plain values, which checkpoints "
            "written by Lightning or lit_bar never do (refused by weights_only loading)"
        )
    else:
        what = f"is a damaged torch {'zip archive' if is_zip else 'pickle'} ({_first_line(err)})"
    return CheckpointError(f"checkpoint {str(path)!r} {what}")


def read_checkpoint(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    weights_only: bool | None = True,
    loader: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint at ``path``, checked: a file, not empty, a torch archive or pickle, a dict with
    a ``state_dict``, and equal to its digest where it carries one (``DIGEST_KEY``, removed from
    the returned dict).

    ``loader(path, map_location=..., weights_only=...)`` reads it (default: ``torch.load``).

    Raises:
        CheckpointError: one sentence naming the file and what is wrong with it.
    """
    file = Path(path)
    if not file.exists():
        where = file.parent if str(file.parent) not in ("", ".") else Path.cwd()
        raise CheckpointError(f"checkpoint {str(file)!r} does not exist (no such file in {str(where)!r})")
    if file.is_dir():
        raise CheckpointError(f"checkpoint {str(file)!r} is a folder, not a checkpoint file")
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {str(file)!r} is empty (0 bytes): a write that never finished?")
    if not os.access(file, os.R_OK):
        raise CheckpointError(f"checkpoint {str(file)!r} cannot be read (permission denied)")
    load = loader or torch.load
    try:
        with warnings.catch_warnings():  # torch's remark on a foreign pickle's protocol: we say more
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            checkpoint = load(file, map_location=map_location, weights_only=weights_only)
    except Exception as err:  # torch raises KeyError, EOFError, RuntimeError, UnpicklingError, ...
        raise _unreadable(file, err) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {str(file)!r} holds a {type(checkpoint).__name__}, not a Lightning checkpoint "
            "(a dict with a 'state_dict')"
        )
    if "state_dict" not in checkpoint:
        keys = ", ".join(repr(k) for k in list(checkpoint)[:6]) + (", ..." if len(checkpoint) > 6 else "")
        hint = (
            " (a bare model state_dict?)"
            if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
            else ""
        )
        raise CheckpointError(
            f"checkpoint {str(file)!r} is not a Lightning checkpoint: it has no 'state_dict' entry "
            f"(it has {keys or 'nothing'}){hint}"
        )
    saved = checkpoint.pop(DIGEST_KEY, None)
    if saved is not None:
        found = checkpoint_digest(checkpoint)
        if not isinstance(saved, dict) or saved.get("hexdigest") != found["hexdigest"]:
            raise CheckpointError(
                f"checkpoint {str(file)!r} is corrupt: its contents ({found['tensors']} tensors) do not "
                "match the SHA-256 digest written with it (a changed bit, or a file pieced together "
                "from two writes); resume from another checkpoint"
            )
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes a digest and saves atomically, and checks both on load.

    Remote paths (``s3://``, ...) go through Lightning's own code unchanged (no digest added).
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or _is_remote(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with_digest = {**checkpoint, DIGEST_KEY: checkpoint_digest(checkpoint)}
        save_atomically(with_digest, path)

    @override
    def load_checkpoint(
        self,
        path: Any,
        map_location: Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if _is_remote(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(path, map_location=map_location, weights_only=weights_only)


def _is_remote(path: Any) -> bool:
    return "://" in str(path)


# ---------------------------------------------------------------------------- "last" checkpoint


def _get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` of a jsonargparse ``Namespace`` or a dict (``default`` when absent or None)."""
    value = config.get(key) if hasattr(config, "get") else getattr(config, key, None)
    return default if value is None else value


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def run_checkpoint_folders(trainer: Any, cwd: str | os.PathLike | None = None) -> list[Path]:
    """Where the run described by ``trainer`` (the ``trainer:`` section of a parsed ``lit-bar``
    config, before anything is built) writes its checkpoints, Lightning's rule for each
    ``ModelCheckpoint``: its ``dirpath``; else ``<save_dir>/<name>/<version>/checkpoints`` of the
    first logger, every ``version_*`` when the version is not fixed (each run makes a new one); else
    ``<default_root_dir>/checkpoints``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    root = Path(_get(trainer, "default_root_dir", cwd or os.getcwd()))
    callbacks = _get(trainer, "callbacks", [])
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    checkpointers = []
    for callback in callbacks:
        cls = _import(str(_get(callback, "class_path", "")))
        if isinstance(cls, type) and issubclass(cls, ModelCheckpoint):
            checkpointers.append(_get(callback, "init_args", {}))
    if not checkpointers and _get(trainer, "enable_checkpointing", True):
        checkpointers.append({})  # Lightning's default ModelCheckpoint
    folders: list[Path] = []
    for init in checkpointers:
        dirpath = _get(init, "dirpath")
        folders.extend([Path(dirpath)] if dirpath is not None else _logger_folders(trainer, root))
    return list(dict.fromkeys(folders))


def _logger_folders(trainer: Any, root: Path) -> list[Path]:
    logger = _get(trainer, "logger", True)
    logger = logger[0] if isinstance(logger, list) and logger else logger
    if logger is False or logger == []:
        return [root / "checkpoints"]
    init = {} if logger is True else _get(logger, "init_args", {})
    save_dir = Path(_get(init, "save_dir", root))
    name = str(_get(init, "name", "lightning_logs"))
    version = _get(init, "version")
    if version is not None:
        return [
            save_dir / name / (version if isinstance(version, str) else f"version_{version}") / "checkpoints"
        ]
    base = save_dir / name
    versions = sorted(base.glob("version_*"), key=lambda p: (len(p.name), p.name)) if base.is_dir() else []
    return [v / "checkpoints" for v in versions] or [base / "version_*" / "checkpoints"]


def find_last_checkpoint(folders: Iterable[str | os.PathLike]) -> Path:
    """The newest ``*.ckpt`` file (modification time, then name) in ``folders``.

    Raises:
        CheckpointError: none of them holds one; the message lists where it looked.
    """
    folders = list(dict.fromkeys(Path(f) for f in folders))
    found = [p for f in folders if f.is_dir() for p in f.glob("*.ckpt") if p.is_file() and p.name[0] != "."]
    if not found:
        looked = ", ".join(repr(str(f)) for f in folders) or "no folder (this run saves no checkpoints)"
        raise CheckpointError(
            f"--ckpt_path last: no checkpoint (*.ckpt) found; looked in {looked}. Pass the checkpoint's "
            "path instead, or resume with the same --trainer.default_root_dir / logger save_dir as the run"
        )
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name))
