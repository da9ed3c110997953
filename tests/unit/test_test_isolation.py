"""The suite does not depend on the caller's Hugging Face variables (``tests/conftest.py``).

The hub-sensitive tests run in a subprocess with the variables an offline user sets (and a few
more that would change what the libraries do); they pass there as they do here. Without the
autouse fixture (``--noconftest``) two of them failed: the offline-dataset message and the
"in your local cache" hint (issue 19).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import datasets.config
from huggingface_hub import constants

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "HF_HOME": "/nonexistent/hf-home",
    "HF_HUB_CACHE": "/nonexistent/hub-cache",
    "HF_DATASETS_CACHE": "/nonexistent/datasets-cache",
}


def test_the_fixture_cleans_the_environment(isolated_hugging_face: Path) -> None:
    names = [n for n in os.environ if n.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))]
    assert names == ["HF_HOME"]
    assert os.environ["HF_HOME"] == str(isolated_hugging_face)
    assert not constants.HF_HUB_OFFLINE and not datasets.config.HF_HUB_OFFLINE
    assert constants.ENDPOINT == "https://huggingface.co"
    assert str(isolated_hugging_face / "hub") == constants.HF_HUB_CACHE
    assert isolated_hugging_face / "datasets" == datasets.config.HF_DATASETS_CACHE


def test_hub_sensitive_tests_pass_with_offline_variables_set(tmp_path: Path) -> None:
    tests = [
        "tests/unit/test_hub.py",
        "tests/unit/test_data_errors.py::test_hub_dataset_offline_says_to_pass_a_local_folder",
        "tests/unit/test_data_errors.py::test_hub_model_offline_says_to_pass_a_local_folder",
        "tests/unit/test_test_isolation.py::test_the_fixture_cleans_the_environment",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path}/t", *tests],
        cwd=ROOT,
        env={**os.environ, **HOSTILE},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
