"""Pre-screening end to end: `cme screen` runs the batch-screening flow on an embedded Dask
LocalCluster of 2 worker processes, scoring generated images with a registered champion (an
untrained 32-px convnet: what it predicts does not matter, only that every image is scored
once, by it, and ranked) into per-patient worklists and the prediction log."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import keras
import mlflow
import pytest
from distributed import Client
from PIL import Image

from cme.bootstrap import bootstrap
from cme.settings import Settings
from pipelines.training.model import build_classifier
from pipelines.training.tracking import log_classifier
from registry.labels.domain import IntakeRules
from registry.promotion import GateRecord
from tests.training_support import tiny_network
from usecases import screening
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

    def patient_folder(self, patient: str, images: list[Path]) -> Path:
        """A folder of one patient's photographs (copies of `images`)."""
        folder = self.home / f"patient-{patient.lower()}"
        folder.mkdir()
        for path in images:
            shutil.copy(path, folder)
        return folder


def screened(patient: str) -> str:
    """How many of the patient's images were scored (by any version)."""
    return f"select count(*) from screenings where patient_id = '{patient}'"


def logged_predictions(patient: str) -> str:
    """How many screening predictions were logged of the patient's images' contents."""
    shas = f"select image_sha256 from screenings where patient_id = '{patient}'"
    return f"select count(*) from predictions where source = 'screen' and image_sha256 in ({shas})"


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    """An embedded installation with a champion (version 1) and 120 generated images (each
    test its own, so that counts of predictions by image content stay its own)."""
    home = tmp_path_factory.mktemp("screening")
    write_sample_data(home / "lab", SampleSpec(n=120, seed=11, image_size=64))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CME_", "MLFLOW_", "PREFECT_"))}
    env |= {"CME_HOME": str(home / ".cme"), "CME_PARAMS_FILE": str(ROOT / "params.yaml")}
    images = sorted((home / "lab" / "images").glob("*.jpg"))
    app = bootstrap(Settings(home=home / ".cme", params_file=ROOT / "params.yaml"))
    try:
        app.tracking()
        keras.utils.set_random_seed(5)
        config = tiny_network(seed=5)
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


def cme(
    clinic: Clinic, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cme", *args], env=clinic.env | (env or {}),
                          cwd=clinic.home, capture_output=True, text=True, timeout=600)  # fmt: skip


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
    assert done.stdout.startswith("["), done.stderr[-3000:]
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
    folder = clinic.patient_folder("C", clinic.images[20:60])
    scored = screened("C")
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
    assert clinic.count(logged_predictions("C")) == 40


@pytest.fixture
def dask_cluster(clinic: Clinic, tmp_path: Path) -> Iterator[str]:
    """A Dask cluster of its own, as a clinic runs one: a scheduler and a nanny with 2
    worker processes configured like the platform's (CME_*), started from another folder."""
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler_file = tmp_path / "scheduler.json"
    env = clinic.env | dict.fromkeys(("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"), "1")
    started = [
        subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                          "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                         env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=(tmp_path / "scheduler.log").open("w")),
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        started.append(
            subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file),
                              "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                              "--local-directory", str(tmp_path / "workers")],
                             env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=(tmp_path / "workers.log").open("w"))
        )  # fmt: skip
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            yield client.scheduler.address
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            process.wait(timeout=60)


def test_a_local_folder_is_carried_to_a_cluster_and_a_dead_worker_costs_no_image(
    clinic, dask_cluster
):
    """With CME_DASK_ADDRESS the batches carry the images' bytes (a remote cluster cannot
    read the caller's disk); a worker killed while it scores a batch costs that batch a
    retry on another worker: every image scored once, none twice."""
    folder = clinic.patient_folder("D", clinic.images[60:100])
    scored = screened("D")
    command = [sys.executable, "-m", "cme", "screen", str(folder), "--patient", "D",
               "--batch-size", "2", "--out", "d1"]  # fmt: skip
    log = clinic.home / "remote.log"
    with log.open("w") as output:
        remote = clinic.env | {"CME_DASK_ADDRESS": dask_cluster}
        run = subprocess.Popen(
            command, env=remote, cwd=clinic.home, stdout=output, stderr=subprocess.STDOUT
        )
        killed = _kill_a_busy_worker(Client(dask_cluster, timeout=30), clinic, scored, run)
        run.wait(timeout=600)
    assert killed < 40, "the worker was killed after the last batch"
    assert run.returncode == 0, log.read_text()[-4000:]
    assert clinic.count(scored) == 40
    assert clinic.count(logged_predictions("D")) == 40
    # A batch the dead worker had written before it could answer is run again and finds its
    # images scored: they count as scored before, never twice.
    counts = re.search(r"(\d+) scored now, (\d+) scored before", log.read_text())
    assert counts is not None, log.read_text()[-2000:]
    now, before = map(int, counts.groups())
    assert now + before == 40 and before <= 2, (now, before)  # one batch of 2 at most


def _kill_a_busy_worker(
    client: Client, clinic: Clinic, scored: str, run: subprocess.Popen[bytes]
) -> int:
    """SIGKILL a worker process while it holds a batch, once the first batch is written
    (the workers have loaded the model); returns the images scored at that moment."""
    with client:
        pids = client.run(os.getpid)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            busy = [worker for worker, keys in client.processing().items() if keys]
            if busy and clinic.count(scored) > 0:
                done = clinic.count(scored)
                os.kill(pids[busy[0]], signal.SIGKILL)
                return done
            time.sleep(0.05)
    raise AssertionError("no worker was busy with a batch while the run went on")


@pytest.fixture
def object_store(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An S3-compatible object store (moto's server; MinIO in production) and what a client
    needs to reach it: botocore's standard variables, as a clinic's workers would have."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=(tmp_path / "moto.log").open("w"))  # fmt: skip
    env = {
        "AWS_ACCESS_KEY_ID": "cme-test",
        "AWS_SECRET_ACCESS_KEY": "cme-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    }
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.2)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_clinic_day_in_an_object_store_is_screened_from_its_urls(clinic, object_store):
    store = fsspec.filesystem("s3", endpoint_url=object_store["AWS_ENDPOINT_URL_S3"],
                              key="cme-test", secret="cme-test")  # fmt: skip
    store.mkdir("clinic")
    for path in clinic.images[100:110]:
        store.put_file(str(path), f"clinic/day2/patient-e/{path.name}")
    for path in clinic.images[110:114]:
        store.put_file(str(path), f"clinic/day2/patient-f/{path.name}")
    rows = [f"patient-e/{path.name},E" for path in clinic.images[100:110]]
    rows += [f"patient-f/{path.name},F" for path in clinic.images[110:114]]
    rows.append("patient-f/gone.jpg,F")
    store.pipe("clinic/day2/day.csv", ("image,patient_id\n" + "\n".join(rows) + "\n").encode())

    done = cme(clinic, "screen", "s3://clinic/day2/day.csv", "--workers", "2", "--batch-size",
               "4", "--out", "day2", "--format", "json", env=object_store)  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]  # gone.jpg is not there
    worklist = json.loads(done.stdout)
    assert {(row["patient_id"], row["image"]) for row in worklist} == {
        (patient, f"s3://clinic/day2/patient-{patient.lower()}/{path.name}")
        for patient, paths in (("E", clinic.images[100:110]), ("F", clinic.images[110:114]))
        for path in paths
    }
    assert "not scored: s3://clinic/day2/patient-f/gone.jpg: cannot read the file" in done.stderr
    page = (clinic.home / "day2" / "worklist.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 14  # thumbnails read from the store

    folder = cme(clinic, "screen", "s3://clinic/day2/patient-e/", "--patient", "E",
                 "--workers", "1", "--out", "day2-e", env=object_store)  # fmt: skip
    assert folder.returncode == 0, folder.stderr[-3000:]
    assert "10 images of 1 patients: 0 scored now, 10 scored before" in folder.stdout


def test_a_carried_batch_is_scored_without_its_files(clinic):
    """What a remote worker gets: the bytes, not a path it could open (this one names no
    file at all), or the caller's reason for not carrying them."""
    app = bootstrap(Settings(home=clinic.home / ".cme", params_file=ROOT / "params.yaml"))
    try:
        model = screening.screening_model(app, "models:/melanoma-resnet50/1")
        refused = "cannot read the file (Permission denied)"
        content = clinic.images[119].read_bytes()
        batch = [
            screening.ScreeningImage("/caller/g1.jpg", "G", content=content),
            screening.ScreeningImage("/caller/g2.jpg", "G", unreadable=refused),
        ]
        outcome = screening.score_batch(app, model, batch, IntakeRules())
        results = app.screening_log().results(model.uri, ("G",))
    finally:
        app.close()
    assert outcome == screening.BatchOutcome(1, 0, (("/caller/g2.jpg", refused),))
    assert [result.image for result in results] == ["/caller/g1.jpg"]


def test_a_model_that_cannot_screen_is_refused_before_any_worker_starts(clinic):
    folder = clinic.patient_folder("Z", clinic.images[100:102])
    name = Settings(home=clinic.home / ".cme").model_name

    nobody = cme(clinic, "screen", str(folder), "--patient", "Z", "--model-uri",
                 f"models:/{name}@nobody")  # fmt: skip
    moving = cme(clinic, "screen", str(folder), "--patient", "Z", "--model-uri",
                 f"models:/{name}/latest")  # fmt: skip

    assert nobody.returncode == 1, nobody.stderr
    assert "no version has that alias" in nobody.stderr
    assert moving.returncode == 2, moving.stderr
    assert "name a version number" in moving.stderr
    assert "Dask" not in nobody.stderr + moving.stderr  # refused before a cluster started
    assert clinic.count(screened("Z")) == 0
