"""Load models, tokenizers and datasets from a local folder/files, the local Hugging Face cache, or the hub.

A name that is not a local path is a hub name, resolved the way transformers and datasets resolve it:

- ``HF_HUB_OFFLINE=1``: from the local cache only (transformers' and datasets' own offline mode);
  a name the cache does not hold fails at once with a message that says to pass a local path.
- otherwise, when the hub answers (one HTTP request through huggingface_hub's client, so
  ``HTTPS_PROXY``, ``HF_ENDPOINT`` and ``huggingface_hub.set_client_factory`` apply): downloaded.
- otherwise (no network): a clear message at once, instead of half a minute of retries, saying to
  pass a local path or to set ``HF_HUB_OFFLINE=1`` for what the cache holds.

No remote code runs unless ``trust_remote_code=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["SPLIT_SUFFIXES", "hub_reachable", "load_splits", "resolve_pretrained"]

SPLIT_SUFFIXES = ("jsonl", "json", "csv", "parquet")
_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}
_OFFLINE_HINT = "set HF_HUB_OFFLINE=1 to load what your local Hugging Face cache holds"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers an HTTP ``HEAD`` of its endpoint within ``timeout`` seconds.

    The request goes through ``huggingface_hub``'s own HTTP client, so proxies (``HTTPS_PROXY``),
    ``HF_ENDPOINT`` and a client set with ``huggingface_hub.set_client_factory`` apply as they do
    for downloads. ``False`` under ``HF_HUB_OFFLINE=1`` without any request.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        response = get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # any transport failure (DNS, refused, proxy, TLS, timeout) means "not reachable"
        return False
    return response.status_code < 500  # a proxy's 502/504 is no hub


def _is_local_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or (os.sep in name and Path(name).expanduser().exists())


def _cached_snapshot(repo_id: str) -> str | None:
    """The local snapshot folder of ``repo_id`` in the hub cache, or ``None`` (no network used)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError):  # not cached; or not a valid repo id
        return None


def resolve_pretrained(name_or_path: str, what: str = "model") -> str:
    """What to pass to ``from_pretrained``: a local folder, or a hub name transformers can resolve.

    Returns ``name_or_path`` unchanged (a local folder's path expanded). Under ``HF_HUB_OFFLINE=1``
    a hub name must be in the local cache (transformers then loads it from there).

    Raises:
        ValueError: a local-looking path that is not a folder; a hub name that the cache lacks
            under ``HF_HUB_OFFLINE=1``; a hub name while the hub is unreachable.
    """
    from huggingface_hub import constants

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if _is_local_path(name_or_path):
        raise ValueError(f"{what} path {name_or_path!r} is not an existing folder")
    local_hint = f"--model.init_args.model_name_or_path /path/to/{name_or_path.split('/')[-1]}"
    if constants.HF_HUB_OFFLINE:
        if _cached_snapshot(name_or_path) is None:
            raise ValueError(
                f"{what} {name_or_path!r} is not a local folder and not in the local Hugging Face cache "
                f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE=1 forbids downloading it. Pass a local "
                f"folder instead, e.g. {local_hint}"
            )
        return name_or_path
    if not hub_reachable():
        cached = _cached_snapshot(name_or_path) is not None
        advice = f"It is in your local cache: {_OFFLINE_HINT}" if cached else "Pass a local folder instead"
        raise ValueError(
            f"{what} {name_or_path!r} is not a local folder and the Hugging Face hub is unreachable "
            f"(offline). {advice}, e.g. {local_hint}"
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


def _load_local(data_dir: str) -> Any:
    import datasets

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


def load_splits(
    dataset_name: str | None,
    dataset_config: str | None = None,
    data_dir: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """A ``datasets.DatasetDict`` from ``data_dir`` (``{train,validation,test}.{jsonl,csv,parquet}`` in
    the hub schema), or ``datasets.load_dataset(dataset_name, dataset_config)``: from the local
    datasets cache under ``HF_HUB_OFFLINE=1``, else from the hub.

    Raises:
        ValueError: no ``data_dir`` and no ``dataset_name``; a ``data_dir`` without split files; files
            of mixed formats; a hub name the cache lacks under ``HF_HUB_OFFLINE=1``; a hub name
            while the hub is unreachable.
    """
    import datasets
    from huggingface_hub import constants

    if data_dir is not None:
        return _load_local(data_dir)
    if dataset_name is None:
        raise ValueError("pass data_dir (local split files) or dataset_name (a hub dataset)")
    local_hint = "--data.init_args.data_dir DIR with {train,validation,test}.jsonl"
    if constants.HF_HUB_OFFLINE:
        try:  # datasets' offline mode: the latest cached copy, or an error naming what the cache holds
            return datasets.load_dataset(dataset_name, dataset_config, trust_remote_code=trust_remote_code)
        except (ConnectionError, FileNotFoundError, ValueError) as err:
            raise ValueError(
                f"dataset {dataset_name!r} ({dataset_config}) is not in the local datasets cache "
                f"({datasets.config.HF_DATASETS_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading it "
                f"({' '.join(str(err).split())}). Pass a local folder instead: {local_hint}"
            ) from None
    if not hub_reachable():
        raise ValueError(
            f"dataset {dataset_name!r} ({dataset_config}) must come from the Hugging Face hub, which is "
            f"unreachable (offline). Pass a local folder instead: {local_hint}; or, if the datasets "
            f"cache holds it, {_OFFLINE_HINT}"
        )
    return datasets.load_dataset(dataset_name, dataset_config, trust_remote_code=trust_remote_code)
