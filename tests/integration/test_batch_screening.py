"""Pre-screening end to end: `cme screen` runs the batch-screening flow on an embedded Dask
LocalCluster of 2 worker processes, scoring generated images with a registered champion (an
untrained 32-px ResNet50: what it predicts does not matter, only that every image is scored
once, by it, and ranked) into per-patient worklists and the prediction log."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import pytest
from PIL import Image

from cme.bootstrap import bootstrap
from cme.settings import Settings
from pipelines.training.config import TrainConfig
from pipelines.training.model import build_classifier
from pipelines.training.tracking import log_classifier
from registry.promotion import GateRecord
from usecases.sample_data import SampleSpec, write_sample_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = 0.5


@dataclass(frozen=True)
class Clinic:
    home: Path
    env: dict[str, str]
    images: list[Path]

    def count(self, query: str) -> int:
        with sqlite3.connect(self.home / ".cme" / "labels.db") as database:
            return int(database.execute(query).fetchone()[0])


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    """An embedded installation with a champion (version 1) and 60 generated images."""
    home = tmp_path_factory.mktemp("screening")
    write_sample_data(home / "lab", SampleSpec(n=60, seed=11, image_size=64))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CME_", "MLFLOW_", "PREFECT_"))}
    env |= {"CME_HOME": str(home / ".cme"), "CME_PARAMS_FILE": str(ROOT / "params.yaml")}
    images = sorted((home / "lab" / "images").glob("*.jpg"))
    app = bootstrap(Settings(home=home / ".cme", params_file=ROOT / "params.yaml"))
    try:
        app.tracking()
        keras.utils.set_random_seed(5)
        config = TrainConfig(image_size=32, weights="none", unfreeze_from="all", seed=5)
        with mlflow.start_run() as run:
            uri = log_classifier(build_classifier(config, None), 32, THRESHOLD,
                                 images[0].read_bytes())  # fmt: skip
        champions = app.champions()
        champions.register_challenger(
            GateRecord(uri, run.info.run_id, promote=True, needs_approval=True, summary="ok",
                       tags={"threshold": str(THRESHOLD)}, evidence={}), "test")  # fmt: skip
        champions.approve("1", "dr-test")
    finally:
        app.close()
    yield Clinic(home, env, images)


def cme(clinic: Clinic, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cme", *args], env=clinic.env, cwd=clinic.home,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def manifest(clinic: Clinic) -> Path:
    """Patient A: 12 images and three files that cannot be scored; patient B: 8 images."""
    bad = clinic.home / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "notes.jpg").write_text("not an image")
    Image.new("RGB", (10, 10), "brown").save(bad / "tiny.png")
    rows = [(str(path), "A", f"les-{n}", "back") for n, path in enumerate(clinic.images[:12])]
    rows += [(str(bad / "notes.jpg"), "A", "", ""), (str(bad / "tiny.png"), "A", "", ""),
             (str(bad / "gone.jpg"), "A", "", "")]  # fmt: skip
    rows += [(str(path), "B", "", "") for path in clinic.images[12:20]]
    path = clinic.home / "clinic-day.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "patient_id", "lesion_id", "body_site"])
        writer.writerows(rows)
    return path


def test_two_patients_are_ranked_and_the_files_that_cannot_be_scored_are_named(clinic):
    source = manifest(clinic)
    done = cme(clinic, "screen", str(source), "--workers", "2", "--batch-size", "4",
               "--out", "day1", "--format", "json")  # fmt: skip

    assert done.returncode == 1, done.stderr[-3000:]  # three files not scored, the rest are
    rows = json.loads(done.stdout)
    assert sorted({row["patient_id"] for row in rows}) == ["A", "B"]
    for patient, count in (("A", 12), ("B", 8)):
        ranked = [row for row in rows if row["patient_id"] == patient]
        assert [row["rank"] for row in ranked] == list(range(1, count + 1))
        probabilities = [row["probability"] for row in ranked]
        assert probabilities == sorted(probabilities, reverse=True)
    for row in rows:
        assert row["decision"] == (
            "melanoma" if row["probability"] >= THRESHOLD else "not melanoma"
        )
        assert row["model_version"] == "1"
    assert any(row["body_site"] == "back" for row in rows)
    not_scored = [line for line in done.stderr.splitlines() if line.startswith("not scored: ")]
    assert len(not_scored) == 3
    assert any("notes.jpg: file is not a readable image" in line for line in not_scored)
    assert any("tiny.png: image of 10x10 pixels is outside 32..8000" in line for line in not_scored)
    assert any("gone.jpg: cannot read the file" in line for line in not_scored)
    assert clinic.count("select count(*) from predictions where source = 'screen'") == 20
    assert "batches 6: 23 of 23 images (20 scored now, 0 before, 3 not scored)" in done.stderr
    page = (clinic.home / "day1" / "worklist.html").read_text()
    assert "Patient A: 12 images" in page and "data:image/jpeg;base64," in page

    # The same images as `cme predict` answers them with the champion, one process.
    first, last = (row for row in (rows[0], rows[-1]))
    predicted = cme(clinic, "predict", first["image"], last["image"], "--format", "json")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    expected = {row["image"]: row["probability"] for row in json.loads(predicted.stdout)}
    assert expected[first["image"]] == pytest.approx(first["probability"], abs=1e-5)
    assert expected[last["image"]] == pytest.approx(last["probability"], abs=1e-5)


def test_a_repeated_run_scores_nothing_and_logs_nothing_twice(clinic):
    source = manifest(clinic)
    before = clinic.count("select count(*) from predictions where source = 'screen'")
    again = cme(clinic, "screen", str(source), "--workers", "2", "--batch-size", "4",
                "--out", "day1-again")  # fmt: skip
    assert again.returncode == 1, again.stderr[-3000:]
    assert "0 scored now, 20 scored before by models:/melanoma-resnet50/1" in again.stdout
    assert clinic.count("select count(*) from predictions where source = 'screen'") == before
    with (clinic.home / "day1-again" / "worklist.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 20  # the worklist still lists them all


def test_a_killed_run_resumes_where_it_stopped(clinic):
    folder = clinic.home / "patient-c"
    folder.mkdir()
    for path in clinic.images[20:60]:
        shutil.copy(path, folder)
    scored = "select count(*) from screenings where patient_id = 'C'"
    command = [sys.executable, "-m", "cme", "screen", str(folder), "--patient", "C",
               "--workers", "1", "--batch-size", "2", "--out", "c1"]  # fmt: skip
    log = (clinic.home / "killed.log").open("w")
    run = subprocess.Popen(command, env=clinic.env, cwd=clinic.home, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while clinic.count(scored) == 0 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # the CLI, its Dask workers and its Prefect server
    run.wait()
    log.close()
    partial = clinic.count(scored)
    assert 0 < partial < 40, (partial, (clinic.home / "killed.log").read_text()[-3000:])

    resumed = cme(clinic, "screen", str(folder), "--patient", "C", "--workers", "2",
                  "--batch-size", "8", "--out", "c2")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{40 - partial} scored now, {partial} scored before" in resumed.stdout
    assert clinic.count(scored) == 40
    shas = "select image_sha256 from screenings where patient_id = 'C'"
    assert clinic.count(
        f"select count(*) from predictions where source = 'screen' and image_sha256 in ({shas})"
    ) == 40  # fmt: skip
