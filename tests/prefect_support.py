"""Prefect for the flow tests: one temporary Prefect server (prefect_test_harness) per test
session, and a platform home (label registry, MLflow, DVC project) per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.training_support import LENIENT_GATE, QUICK_EVALUATION, TINY_TRAINING

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[str]:
    """A temporary Prefect server for the session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


def write_project(folder: Path, **sections: dict[str, Any]) -> Path:
    """A DVC project with params.yaml asking for tiny training (plus `sections` updates)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(TINY_TRAINING)
    params["gate"].update(LENIENT_GATE)
    params["evaluate"].update(QUICK_EVALUATION)
    params["inbox"]["settle_seconds"] = 0
    # Generated weeks are drawn independently of each other, so the drift report warns on
    # every one; a full retrain on drift would leave no week warm-started from the champion.
    params["retrain"]["full_on_drift"] = False
    for name, values in sections.items():
        params[name].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    if not (folder / ".dvc").is_dir():
        subprocess.run(
            [sys.executable, "-m", "dvc", "init", "--no-scm", "--quiet"], cwd=folder, check=True
        )
    return folder


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: str) -> Path:
    """This test's installation: settings point every store into a fresh project folder."""
    project = write_project(tmp_path / "project")
    for name in list(os.environ):
        if name.startswith(("CME_", "MLFLOW_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CME_HOME", str(project / ".cme"))
    monkeypatch.setenv("CME_DATA_DIR", str(project / "data"))
    monkeypatch.setenv("CME_PROJECT_DIR", str(project))
    monkeypatch.setenv("CME_PARAMS_FILE", str(project / "params.yaml"))
    return project


def copy_export(source: Path, inbox: Path, name: str) -> Path:
    target = inbox / name
    shutil.copytree(source, target)
    return target
