"""lit-bar installed like a package, offline like transformers (issue 10 §5).

One wheel, built offline from a copy of the sources and installed apart from the checkout, runs the
README's GLUE command as written from an empty directory: the ``configs/...`` paths and
``configs/defaults.yaml`` come from the wheel, and the hub names ``roberta-large`` and ``glue/sst2``
from a local Hugging Face cache (``HF_HOME``) under ``HF_HUB_OFFLINE=1`` (a tiny random RoBERTa and
a two-split dataset, prepared the way transformers and datasets cache them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import ROOT, all_texts, sentence_rows, tiny_roberta, write_rows

SOURCES = ("pyproject.toml", "setup.py", "README.md", "lit_bar", "configs")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(
            ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("lit_bar-*.whl")
    return wheel


def _fill_hf_cache(hf_home: Path) -> None:
    """``roberta-large`` in the hub cache layout; ``glue``/``sst2`` in the datasets cache layout."""
    from datasets.packaged_modules.json.json import Json

    splits = {"train": sentence_rows(16, 0, "tr"), "validation": sentence_rows(8, 1, "va")}
    repo = hf_home / "hub" / "models--roberta-large"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    tiny_roberta(repo / "snapshots" / COMMIT, all_texts(splits))
    rows = write_rows(hf_home.parent / "rows", splits)
    Json(
        cache_dir=str(hf_home / "datasets"),
        dataset_name="glue",
        config_name="sst2",
        config_id="sst2",
        hash="0" * 16,
        data_files={split: str(rows / f"{split}.jsonl") for split in splits},
    ).download_and_prepare()


def test_wheel_runs_the_readme_command_offline_from_an_empty_directory(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("lit_bar/configs/")}
    expected = {
        f"lit_bar/configs/{p.relative_to(ROOT / 'configs').as_posix()}"
        for p in (ROOT / "configs").rglob("*.yaml")
    }
    assert shipped == expected and "lit_bar/configs/defaults.yaml" in shipped

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    _fill_hf_cache(tmp_path / "hf")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env["TMPDIR"] = str(tmp_path / "tmp")  # where debug.yaml's temp_root_dir goes
    (tmp_path / "tmp").mkdir()
    command = [
        "fit",
        "--config",
        "configs/glue/roberta-large_sst2.yaml",
        "--config",
        "configs/method/nbar.yaml",
    ]
    command += ["--config", "configs/debug.yaml", "--data.init_args.batch_size", "4"]
    script = "import sys, lit_bar.cli as c; print('LIT_BAR_AT', c.__file__, flush=True); c.main()"
    run = subprocess.run(
        [sys.executable, "-c", script, *command],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # the wheel's copy, not the checkout
    assert f"LIT_BAR_AT {site / 'lit_bar' / 'cli' / '__init__.py'}" in run.stdout
    assert "Seed set to 42" in run.stdout + run.stderr  # configs/defaults.yaml's seed: the defaults applied
    assert list(empty.iterdir()) == []
    (run_dir,) = (tmp_path / "tmp").glob("lit-bar-*")
    saved = (run_dir / "config.yaml").read_text()
    assert "model_name_or_path: roberta-large" in saved and "dataset_name: glue" in saved


@pytest.mark.parametrize("path", ["configs/debug.yaml", "configs/method/nbar.yaml"])
def test_missing_config_paths_resolve_against_the_shipped_configs(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lit_bar.cli import configs_dir, resolve_config_path

    monkeypatch.chdir(tmp_path)
    assert Path(resolve_config_path(path)) == configs_dir() / path.removeprefix("configs/")
    (tmp_path / "configs").mkdir()
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text("trainer: {}\n")
    assert resolve_config_path(path) == path  # a file in the working directory wins
    assert resolve_config_path("configs/nope.yaml") == "configs/nope.yaml"  # left for the parser's error
