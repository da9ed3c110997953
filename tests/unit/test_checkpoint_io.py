"""Unreadable checkpoints stop with one sentence; lit_bar's checkpoints carry a digest and are written
atomically (``lit_bar.io.checkpoints``).

Before (issue 19): a missing, empty, truncated or foreign ``--ckpt_path`` ended in a traceback
(``FileNotFoundError``, ``KeyError: 101`` for a text file, ``PytorchStreamReader failed reading zip
archive``, a ``WeightsUnpickler`` error), and a checkpoint with a flipped bit in a tensor resumed
silently (``torch.load`` reads it without complaint, shown below).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from lit_bar.io.checkpoints import (
    DIGEST_KEY,
    CheckpointError,
    SafeCheckpointIO,
    checkpoint_digest,
    find_last_checkpoint,
    read_checkpoint,
    run_checkpoint_folders,
    save_atomically,
)


def _checkpoint(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "epoch": 1,
        "global_step": 6,
        "state_dict": {"w": torch.randn(64, 8, generator=gen), "b": torch.zeros(8, dtype=torch.float16)},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(6.0)}}, "param_groups": [{"lr": 0.1}]}],
        "hyper_parameters": {"name": "tiny", "sizes": (64, 8)},
    }


def _tensor_offset(path: Path, index: int = 0) -> int:
    """Where the bytes of the ``index``-th tensor record start in a torch zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(f"/data/{index}"))
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len


def _flip_bit(path: Path, offset: int, bit: int = 3) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.ckpt"
    SafeCheckpointIO().save_checkpoint(_checkpoint(), path)
    return path


def test_a_saved_checkpoint_round_trips_and_its_digest_is_a_sha256_of_its_tensors(good: Path) -> None:
    raw = torch.load(good, weights_only=True)
    saved = raw.pop(DIGEST_KEY)
    assert saved["algorithm"] == "sha256" and saved["tensors"] == 3
    # independent: the same bytes, in the same order, hashed by hand, give the same digest
    w, b = raw["state_dict"]["w"], raw["state_dict"]["b"]
    assert w.numpy().tobytes() in good.read_bytes()  # stored as is (what a flipped bit changes)
    again = hashlib.sha256(b"|dict|1\n/'state_dict'|dict|2\n")  # the structure, then each tensor
    for where, t in (("/'state_dict'/'w'", w), ("/'state_dict'/'b'", b)):
        again.update(f"{where}|tensor|{t.dtype}|{tuple(t.shape)}\n".encode() + t.numpy().tobytes())
    assert checkpoint_digest({"state_dict": {"w": w, "b": b}})["hexdigest"] == again.hexdigest()
    loaded = SafeCheckpointIO().load_checkpoint(good)
    assert DIGEST_KEY not in loaded
    assert torch.equal(loaded["state_dict"]["w"], _checkpoint()["state_dict"]["w"])
    assert loaded["hyper_parameters"] == {"name": "tiny", "sizes": (64, 8)}


def test_a_flipped_bit_in_a_tensor_is_refused(good: Path) -> None:
    _flip_bit(good, _tensor_offset(good) + 17)
    torch.load(good, weights_only=True)  # torch itself reads it without complaint
    with pytest.raises(CheckpointError, match=r"good\.ckpt' is corrupt: .* do not match the SHA-256 digest"):
        read_checkpoint(good)


def test_a_changed_plain_value_is_refused(tmp_path: Path) -> None:
    checkpoint = _checkpoint()
    digest = checkpoint_digest(checkpoint)
    checkpoint["global_step"] = 7  # as if the pickled number had been damaged
    torch.save({**checkpoint, DIGEST_KEY: digest}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="is corrupt"):
        read_checkpoint(tmp_path / "c.ckpt")


def test_a_checkpoint_without_a_digest_loads_as_before(tmp_path: Path) -> None:
    TorchCheckpointIO().save_checkpoint(_checkpoint(), tmp_path / "plain.ckpt")  # Lightning's own
    loaded = SafeCheckpointIO().load_checkpoint(tmp_path / "plain.ckpt")
    assert torch.equal(loaded["state_dict"]["w"], _checkpoint()["state_dict"]["w"])


def _bad_files(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one-line error must say about it)."""
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "truncated.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "notes.ckpt").write_text("hello, this is a text file\n")
    (folder / "random.ckpt").write_bytes(bytes((i * 7919 + 13) % 251 for i in range(4096)))
    (folder / "list.ckpt").write_bytes(pickle.dumps([1, 2, 3]))
    torch.save(torch.nn.Linear(2, 2), folder / "module.ckpt")
    torch.save({"weight": torch.ones(2)}, folder / "bare.ckpt")
    torch.save([torch.ones(2)], folder / "tensors.ckpt")
    (folder / "afolder.ckpt").mkdir()
    return {
        "missing": (folder / "missing.ckpt", "does not exist"),
        "empty": (folder / "empty.ckpt", r"is empty \(0 bytes\)"),
        "truncated": (folder / "truncated.ckpt", "is truncated: a torch zip archive without its end"),
        "text": (folder / "notes.ckpt", "is not a checkpoint: neither a torch zip archive nor a pickle"),
        "random": (folder / "random.ckpt", "is not a checkpoint: neither a torch zip archive nor a pickle"),
        "pickle": (folder / "list.ckpt", "is a Python pickle, not a checkpoint"),
        "module": (folder / "module.ckpt", "holds pickled Python objects other than tensors"),
        "bare": (folder / "bare.ckpt", r"has no 'state_dict' entry \(it has 'weight'\) \(a bare model"),
        "list": (folder / "tensors.ckpt", "holds a list, not a Lightning checkpoint"),
        "folder": (folder / "afolder.ckpt", "is a folder, not a checkpoint file"),
    }


def test_each_unreadable_file_is_one_sentence_naming_it(tmp_path: Path, good: Path) -> None:
    for name, (path, says) in _bad_files(tmp_path, good).items():
        with pytest.raises(CheckpointError) as caught:
            read_checkpoint(path)
        message = str(caught.value)
        assert message.startswith(f"checkpoint {str(path)!r} "), name
        assert "\n" not in message and len(message) < 300, name
        assert caught.match(says), (name, message)


def test_lit_bar_stops_before_anything_is_built(tmp_path: Path, good: Path, monkeypatch, capsys) -> None:
    """``lit-bar fit/validate/predict --ckpt_path BAD`` (the console script's ``main()`` reading
    ``sys.argv``): one error line, status 2, before any class is built (the model path does not even
    exist) and before anything is written."""
    from lit_bar.cli import main

    files = _bad_files(tmp_path, good)
    out = tmp_path / "out"
    for subcommand, name in [("fit", "missing"), ("fit", "truncated"), ("validate", "empty"),
                             ("predict", "module")]:  # fmt: skip
        path, says = files[name]
        argv = ["lit-bar", subcommand, "--model", "SequenceClassifier",
                "--model.init_args.model_name_or_path", str(tmp_path / "no-model"),
                "--data", "GlueDataModule", "--data.init_args.data_dir", str(tmp_path / "no-data"),
                "--trainer.default_root_dir", str(out), "--ckpt_path", str(path)]  # fmt: skip
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as stop:
            main()
        assert stop.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith(f"lit-bar: error: checkpoint {str(path)!r} "), (subcommand, name, err)
        assert "Traceback" not in "\n".join(err) and len(err) <= 2, err  # the line and the traceback hint
        assert re.search(says, err[0]), (name, err[0])
    assert not out.exists()


_KILLED_WRITER = """
import os, sys, time, torch
from lit_bar.io.checkpoints import SafeCheckpointIO
path, ready = sys.argv[1], sys.argv[2]
real_save = torch.save

def half_then_hang(obj, f):  # write half of the real bytes, say so, and wait for the kill
    import io
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    open(ready, "w").close()
    time.sleep(120)

torch.save = half_then_hang
SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((4096,), 2.0)}}, path)
"""


def test_kill_9_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, good: Path) -> None:
    before = good.read_bytes()
    ready = tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(good), str(ready)])
    try:
        for _ in range(1200):
            if ready.exists() or child.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the writer never got to write"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert good.read_bytes() == before  # the previous checkpoint, untouched
    assert torch.equal(read_checkpoint(good)["state_dict"]["w"], _checkpoint()["state_dict"]["w"])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".good.ckpt.")  # hidden, not a *.ckpt
    assert sorted(p.name for p in tmp_path.glob("*.ckpt") if not p.name.startswith(".")) == ["good.ckpt"]
    save_atomically(_checkpoint(1), tmp_path / "next.ckpt")  # the next save clears the dead writer's file
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_last_is_the_newest_checkpoint_of_the_runs_folders(tmp_path: Path) -> None:
    from jsonargparse import Namespace

    logs = tmp_path / "logs" / "lightning_logs"
    for version, step in ((0, 4), (1, 8), (2, None)):  # version_2: a run that saved nothing yet
        (logs / f"version_{version}" / "checkpoints").mkdir(parents=True)
        if step is not None:
            save_atomically(_checkpoint(), logs / f"version_{version}" / "checkpoints" / f"step={step}.ckpt")
    os.utime(logs / "version_0/checkpoints/step=4.ckpt", (1, 1))  # older
    trainer = Namespace(
        default_root_dir=str(tmp_path),
        logger=Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(
            save_dir=str(tmp_path / "logs"), name="lightning_logs", version=None)),
        callbacks=[Namespace(class_path="lit_bar.callbacks.AdapterExport", init_args=Namespace())],
    )  # fmt: skip
    folders = run_checkpoint_folders(trainer)
    assert folders == [logs / f"version_{v}" / "checkpoints" for v in (0, 1, 2)]
    assert find_last_checkpoint(folders) == logs / "version_1/checkpoints/step=8.ckpt"
    # a ModelCheckpoint with its own dirpath; no logger: <default_root_dir>/checkpoints
    trainer.callbacks.append(Namespace(class_path="lightning.pytorch.callbacks.ModelCheckpoint",
                                       init_args=Namespace(dirpath=str(tmp_path / "ck"))))  # fmt: skip
    assert run_checkpoint_folders(trainer) == [tmp_path / "ck"]
    assert run_checkpoint_folders({"default_root_dir": str(tmp_path), "logger": False}) == [
        tmp_path / "checkpoints"
    ]
    with pytest.raises(
        CheckpointError, match=r"--ckpt_path last: no checkpoint \(\*\.ckpt\) found; looked in"
    ):
        find_last_checkpoint([tmp_path / "ck", tmp_path / "checkpoints"])
