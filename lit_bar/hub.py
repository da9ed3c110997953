"""Load models, tokenizers and datasets from a local folder/files or, when reachable, the Hugging Face hub.

A name that is not a local path goes to the hub; when the hub cannot be reached (offline, or
``HF_HUB_OFFLINE=1``) it fails at once with a message that says to pass a local path, instead
of retrying for half a minute. No remote code runs unless ``trust_remote_code=True``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["SPLIT_SUFFIXES", "hub_reachable", "load_splits", "resolve_pretrained"]

SPLIT_SUFFIXES = ("jsonl", "json", "csv", "parquet")
_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint answers a TCP connection within ``timeout`` seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    parsed = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_pretrained(name_or_path: str, what: str = "model") -> str:
    """Return ``name_or_path`` if it is a local folder or the hub is reachable; else raise ``ValueError``."""
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    if os.sep in name_or_path and name_or_path.startswith((".", "/", "~")):
        raise ValueError(f"{what} path {name_or_path!r} is not an existing folder")
    if not hub_reachable():
        raise ValueError(
            f"{what} {name_or_path!r} is not a local folder and the Hugging Face hub is unreachable "
            "(offline). Pass a local folder instead, e.g. --model.init_args.model_name_or_path "
            f"/path/to/{name_or_path.split('/')[-1]}"
        )
    return name_or_path


def _split_files(data_dir: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for split in ("train", "validation", "test"):
        for suffix in SPLIT_SUFFIXES:
            candidate = data_dir / f"{split}.{suffix}"
            if candidate.is_file():
                files[split] = str(candidate)
                break
    return files


def load_splits(
    dataset_name: str | None,
    dataset_config: str | None = None,
    data_dir: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """A ``datasets.DatasetDict`` from ``data_dir`` (``{train,validation,test}.{jsonl,csv,parquet}`` in
    the hub schema) or from the hub (``datasets.load_dataset(dataset_name, dataset_config)``).

    Raises:
        ValueError: no ``data_dir`` and no ``dataset_name``; a ``data_dir`` without split files; files
            of mixed formats; a hub name while the hub is unreachable.
    """
    import datasets

    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        files = _split_files(folder) if folder.is_dir() else {}
        if not files:
            raise ValueError(
                f"data_dir {str(folder)!r} holds no split files: expected one or more of "
                f"{{train,validation,test}}.{{{','.join(SPLIT_SUFFIXES)}}}"
            )
        formats = {_BUILDERS[Path(f).suffix[1:]] for f in files.values()}
        if len(formats) > 1:
            raise ValueError(f"data_dir {str(folder)!r} mixes file formats {sorted(formats)}; use one format")
        return datasets.load_dataset(formats.pop(), data_files=files)
    if dataset_name is None:
        raise ValueError("pass data_dir (local split files) or dataset_name (a hub dataset)")
    if not hub_reachable():
        raise ValueError(
            f"dataset {dataset_name!r} ({dataset_config}) must come from the Hugging Face hub, which is "
            "unreachable (offline). Pass a local folder instead: --data.init_args.data_dir DIR with "
            "{train,validation,test}.jsonl"
        )
    return datasets.load_dataset(dataset_name, dataset_config, trust_remote_code=trust_remote_code)
