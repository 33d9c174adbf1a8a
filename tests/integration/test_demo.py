"""`cme demo` as a new user runs it (here with tiny training): three weeks through the real
flows, ending with the champion, every decision and the commands that open the UIs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prefect_support import ROOT
from tests.training_support import LENIENT_GATE, QUICK_EVALUATION, TINY_TRAINING

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_demo_lives_three_weeks_through_the_flows(tmp_path: Path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "--quiet"], cwd=tmp_path,
                   check=True)  # fmt: skip
    sections = {"train": TINY_TRAINING, "gate": LENIENT_GATE, "evaluate": QUICK_EVALUATION}
    tiny = [f"-S{section}.{key}={value}" for section, values in sections.items()
            for key, value in values.items()]  # fmt: skip
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("CME_", "MLFLOW_", "PREFECT_"))}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "cme", "demo", "--first-week", "160", "--later-weeks", "60", *tiny],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]

    lines = done.stdout.splitlines()
    for week in (1, 2, 3):
        assert any(
            line.startswith(f"week {week}: processed lab-export-week{week}") for line in lines
        )
    # The lenient gate passes the first model; the demo's reviewer approves it.
    assert "week 1: version 1 is now the champion (was none)" in lines
    assert any(line.startswith("champion: version ") for line in lines)
    assert any("mlflow ui --backend-store-uri sqlite:///" in line for line in lines)
    assert any("prefect server start" in line for line in lines)
    processed = sorted(path.name[17:] for path in (tmp_path / ".cme/inbox/processed").iterdir())
    assert processed == ["lab-export-week1", "lab-export-week2", "lab-export-week3"]

    again = subprocess.run(
        [sys.executable, "-m", "cme", "demo", "--first-week", "160", "--later-weeks", "60", *tiny],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped: the labels have not changed since the last retrain") == 3
