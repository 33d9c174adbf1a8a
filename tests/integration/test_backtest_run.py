"""`cme backtest` as users run it: a labelled set in the HAM10000 layout replayed as weekly
arrivals through the real weekly-retrain flow, in an installation of its own, reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.prefect_support import ROOT
from tests.training_support import LENIENT_GATE, QUICK_EVALUATION, TINY_TRAINING
from usecases.sample_data import SampleSpec, write_sample_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def overrides() -> list[str]:
    sections = {"train": TINY_TRAINING, "gate": LENIENT_GATE, "evaluate": QUICK_EVALUATION}
    return [
        argument
        for section, values in sections.items()
        for key, value in values.items()
        for argument in ("-S", f"{section}.{key}={value}")
    ]


def test_a_backtest_replays_weeks_and_reports_the_champion_week_by_week(tmp_path: Path) -> None:
    labelled = tmp_path / "labelled"
    write_sample_data(labelled, SampleSpec(n=260, seed=21, image_size=64))
    out = tmp_path / "backtest"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CME_", "MLFLOW_"))}
    environment["CME_PARAMS_FILE"] = str(ROOT / "params.yaml")
    command = [sys.executable, "-m", "cme", "backtest", "--data", str(labelled), "--weeks", "2",
               "--first-week-share", "0.6", "--out", str(out), *overrides()]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]

    document = json.loads((out / "report" / "backtest.json").read_text())
    weeks = document["weeks"]
    assert [week["week"] for week in weeks] == [1, 2]
    assert sum(week["arrived"] for week in weeks) == 260
    assert weeks[0]["outcome"] == "promoted"  # lenient gate; the backtest's reviewer approved
    assert weeks[0]["champion_version"] == "1" and weeks[0]["champion_roc_auc"] is not None
    assert weeks[1]["outcome"] in ("promoted", "rejected")
    assert all(week["test_images"] == weeks[0]["test_images"] > 0 for week in weeks)
    assert document["verdict"] in done.stdout
    with Image.open(out / "report" / "backtest.png") as chart:
        assert chart.size[0] > 400
    page = (out / "report" / "backtest.html").read_text()
    assert "data:image/png;base64," in page and "first_model_roc_auc" in page
    assert not (tmp_path / ".cme").exists()  # nothing outside its own installation
