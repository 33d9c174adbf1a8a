"""Real-time predictions end to end: `cme serve` started on 127.0.0.1 against a real
`mlflow server`, answering generated JPEGs sent as base64 the way `mlflow models serve`
takes them; bad input refused with a 4xx while it keeps serving; the champion alias moved
under a stream of requests; every prediction logged and matched by `cme monitor` with the
histopathology labels that arrive afterwards. Also `cme predict` and the plain
`mlflow models serve -m models:/NAME@champion`.

The two registered versions are untrained small convnets at 32 px (what they predict does not
matter here, only that each answers as itself); version 2 decides at threshold 0.999, so
it calls nothing melanoma and its real-world sensitivity is 0."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cme.bootstrap import bootstrap
from cme.settings import Settings
from pipelines.training.model import build_classifier
from pipelines.training.tracking import log_classifier
from registry.audit_trail import AuditTrailRepository
from registry.models import CHALLENGER, CHAMPION, ModelRegistry
from registry.promotion import ChampionLifecycle, GateRecord
from tests.mlflow_server import MlflowServer
from tests.training_support import tiny_network

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
LOGGED_THRESHOLD = 0.5  # what each copy was logged with; the registry's tag must win
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Clinic:
    """A model registry with two served-ready versions, champion 1, and an empty label
    registry: what the server reads."""

    home: Path
    env: dict[str, str]
    model_name: str
    lifecycle: ChampionLifecycle
    images: list[Path]
    metadata: Path
    thresholds: dict[str, float]


@pytest.fixture(scope="module")
def clinic(
    mlflow_server: MlflowServer, generated_set: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Clinic]:
    home = tmp_path_factory.mktemp("clinic")
    name = f"melanoma-serving-{uuid.uuid4().hex[:8]}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CME_")}
    env |= {"CME_HOME": str(home), "CME_MODEL_NAME": name,
            "MLFLOW_TRACKING_URI": mlflow_server.url}  # fmt: skip
    images = sorted((generated_set / "images").glob("*.jpg"))
    logged = [_untrained_model(mlflow_server.url, seed, images[0]) for seed in (1, 2)]
    # Version 1 operates at a threshold that calls the first two images differently than
    # the logged 0.5 would; version 2 at 0.999, so it calls nothing melanoma.
    first = np.sort(probabilities_of(env, logged[0][0], [p.read_bytes() for p in images[:2]]))
    above = first[first >= LOGGED_THRESHOLD]
    thresholds = {"1": float(above[-1] + 1e-4) if len(above) else float(first[0] - 1e-4),
                  "2": 0.999}  # fmt: skip
    trail = AuditTrailRepository.open(f"sqlite:///{home / 'labels.db'}", migrate=True)
    lifecycle = ChampionLifecycle(ModelRegistry.at(mlflow_server.url, name), trail)
    for (model_uri, run_id), (version, threshold) in zip(logged, thresholds.items(), strict=True):
        record = GateRecord(model_uri, run_id, promote=True, needs_approval=True,
                            summary="every rule passed", tags={"threshold": str(threshold)},
                            evidence={"decision": {"promote": True}})  # fmt: skip
        lifecycle.register_challenger(record, "test")
        assert lifecycle.models.aliased(CHALLENGER).version == version
        if version == "1":  # the first champion, as a reviewer makes it; 2 is judged against it
            lifecycle.approve("1", "reviewer")
    yield Clinic(home, env, name, lifecycle, images, generated_set / "metadata.csv", thresholds)
    trail.close()


def _untrained_model(tracking_uri: str, seed: int, example: Path) -> tuple[str, str]:
    earlier = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        keras.utils.set_random_seed(seed)
        config = tiny_network(seed=seed)
        with mlflow.start_run() as run:
            model_uri = log_classifier(
                build_classifier(config, None), 32, 0.5, example.read_bytes()
            )
        return model_uri, run.info.run_id
    finally:
        mlflow.set_tracking_uri(earlier)
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], log: Path, url: str) -> Iterator[Any]:
    """A server process, yielded once GET /ping answers; stopped with SIGTERM on exit."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while get(url, "/ping")[0] != 200:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no answer after {START_TIMEOUT_S} s"
            time.sleep(0.5)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def get(url: str, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url + path, timeout=10) as response:
            return response.status, json.loads(response.read().strip() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return 0, None


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
    request = urllib.request.Request(
        url + "/invocations", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        content_type = error.headers.get("content-type", "")
        return error.code, json.loads(body) if "json" in content_type else body.decode()


def images_request(*contents: bytes) -> bytes:
    rows = [[base64.b64encode(image).decode()] for image in contents]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


def probabilities_of(env: dict[str, str], model_uri: str, images: list[bytes]) -> np.ndarray:
    return _answers(env, model_uri, images)["probability"].to_numpy()


def expected_probabilities(clinic: Clinic, version: str, images: list[bytes]) -> np.ndarray:
    answers = _answers(clinic.env, f"models:/{clinic.model_name}/{version}", images)
    assert set(answers["model_version"]) == {version}  # the copy knows the version it is
    return answers["probability"].to_numpy()


def _answers(env: dict[str, str], model_uri: str, images: list[bytes]) -> pd.DataFrame:
    earlier = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        return mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"image": images}))
    finally:
        mlflow.set_tracking_uri(earlier)
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def cme(clinic: Clinic, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cme", *args], cwd=ROOT, env=clinic.env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_the_served_champion_answers_refuses_bad_input_and_follows_the_alias(clinic, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cme", "serve", "--port", str(port),
               "--poll-seconds", "0.5", "--max-request-mb", "8"]  # fmt: skip
    contents = [path.read_bytes() for path in clinic.images]
    with running(command, clinic.env, tmp_path / "serve.log", url) as server:
        # The champion answers: probability, decision at its threshold, version.
        status, answer = post(url, images_request(*contents[:3]))
        assert status == 200, answer
        predictions = answer["predictions"]
        expected = expected_probabilities(clinic, "1", contents[:3])
        np.testing.assert_allclose([p["probability"] for p in predictions], expected, rtol=1e-5)
        assert [p["melanoma"] for p in predictions] == list(expected >= clinic.thresholds["1"])
        assert {p["model_version"] for p in predictions} == {"1"}
        assert get(url, "/model")[1]["model_version"] == "1"
        encoded = [base64.b64encode(image).decode() for image in contents[:3]]
        records = [{"image": text} for text in encoded]
        for other_format in ({"inputs": {"image": encoded}}, {"dataframe_records": records}):
            status, again = post(url, json.dumps(other_format).encode())
            assert status == 200 and again == answer, (other_format.keys(), again)

        # Bad input: a clear 4xx naming the row, and the server keeps serving.
        truncated = contents[0][: len(contents[0]) // 2]
        huge = tmp_path / "huge.png"
        Image.new("RGB", (8000, 8000)).save(huge)  # 64 Mpx in a small file
        thumbnail, grey = tmp_path / "thumbnail.png", tmp_path / "grey.jpg"
        Image.new("RGB", (1, 1), "brown").save(thumbnail)  # what registration would refuse
        Image.new("L", (64, 64), 120).save(grey)
        refusals = {
            "a 1x1 image": (images_request(thumbnail.read_bytes()), 400, "1x1 pixels is outside"),
            "a grey image": (images_request(grey.read_bytes()), 400, "colour mode L, not RGB"),
            "not an image": (images_request(contents[0], b"GIF? no, a text file"), 400, "row 1"),
            "truncated JPEG": (images_request(truncated), 400, "row 0: not a readable image"),
            "empty body": (b"", 400, "empty request body"),
            "too many pixels": (images_request(huge.read_bytes()), 413, "8000x8000 pixels"),
            "too large a body": (b"{" + b" " * (9 * 2**20) + b"}", 413, "over the limit"),
            "not base64": (b'{"dataframe_split": {"columns": ["image"], "data": [["%%"]]}}',
                           400, "row 0: empty image"),  # MLflow's parser drops what is not base64
        }  # fmt: skip
        for case, (body, status_wanted, words) in refusals.items():
            status, refusal = post(url, body)
            assert status == status_wanted, (case, refusal)
            assert words in refusal["message"], (case, refusal)
        status, refusal = post(url, b"image=abc", "text/plain")
        assert status == 415 and "only supports" in refusal, refusal
        assert post(url, images_request(contents[3]))[0] == 200

        # The alias moves under a stream of requests: each is answered, by 1 then by 2.
        answered: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def clinical_system() -> None:
            while not stop.is_set():
                try:
                    status, answer = post(url, images_request(*contents[4:6]))
                except Exception:  # a dropped connection is a dropped request
                    status, answer = 0, None
                version = answer["predictions"][0]["model_version"] if status == 200 else None
                answered.append((status, version))

        caller = threading.Thread(target=clinical_system)
        caller.start()
        time.sleep(2)
        clinic.lifecycle.approve("2", "reviewer")  # promoted: the champion alias moves to 2
        deadline = time.monotonic() + 120
        while not answered or answered[-1][1] != "2":
            assert time.monotonic() < deadline, answered[-5:]
            time.sleep(0.5)
        time.sleep(1)
        stop.set()
        caller.join()
        assert all(status == 200 for status, _ in answered), answered
        versions = [version for _, version in answered]
        switch = versions.index("2")
        assert switch > 0 and set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}

        status, answer = post(url, images_request(*contents))
        assert status == 200 and not any(p["melanoma"] for p in answer["predictions"])
        os.killpg(server.pid, signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    log_text = (tmp_path / "serve.log").read_text()
    assert "serving " + clinic.model_name + " version 1" in log_text
    assert "not logged: 0" in log_text

    # Every answered image is in the prediction log, with the version that answered it.
    app = bootstrap(Settings(home=clinic.home))
    labels = app.label_registry()
    logged = app.prediction_log().predictions(clinic.model_name)
    assert len(logged) == 3 * 3 + 1 + 2 * len(answered) + len(contents)  # 3 formats of 3
    assert {record.model_version for record in logged} == {"1", "2"}
    assert all(record.source == "serve" for record in logged)

    # Histopathology arrives later; the monitor matches it and warns on version 2.
    labels.import_metadata(clinic.metadata, clinic.metadata.parent / "images", steward="lab")
    app.close()
    floors = ["-S", "monitor.min_melanoma=1", "-S", "monitor.min_other=1"]
    report = cme(clinic, "monitor", "--format", "json", *floors)
    assert report.returncode == 1, report.stdout + report.stderr
    document = json.loads(report.stdout)
    assert document["champion"] == "2"
    by_version = {v["model_version"]: v for v in document["versions"]}
    histo = pd.read_csv(clinic.metadata).query("dx_type == 'histo'")
    assert by_version["2"]["cases"] == len(histo)
    assert by_version["2"]["melanoma"] == int((histo["dx"] == "mel").sum())
    assert by_version["2"]["sensitivity"]["value"] == 0.0
    assert by_version["1"]["cases"] == len(
        set(histo["image_id"]) & {p.stem for p in clinic.images[:6]}
    )
    text = cme(clinic, "monitor", *floors)
    assert "version 2 (champion)" in text.stdout and "below the floor" in text.stdout


def test_cme_predict_and_mlflow_models_serve_answer_as_the_champion(clinic, tmp_path):
    if clinic.lifecycle.expected_champion() == "2":  # after the alias test, on this worker
        clinic.lifecycle.rollback("test", "back to version 1")
    champion = clinic.lifecycle.models.aliased(CHAMPION)
    assert champion is not None
    contents = [path.read_bytes() for path in clinic.images[:2]]
    expected = expected_probabilities(clinic, champion.version, contents)
    threshold = clinic.thresholds[champion.version]
    assert list(expected >= threshold) != list(expected >= LOGGED_THRESHOLD)

    unreadable = tmp_path / "notes.txt"
    unreadable.write_text("not an image")
    missing = tmp_path / "gone.jpg"
    files = [str(clinic.images[0]), str(unreadable), str(missing), str(clinic.images[1])]
    done = cme(clinic, "predict", *files, "--format", "json")
    assert done.returncode == 1, done.stderr
    assert f"{unreadable}: not a readable image" in done.stderr
    assert f"{missing}: cannot read the file (No such file or directory)" in done.stderr
    rows = json.loads(done.stdout)
    assert [row["image"] for row in rows] == [files[0], files[3]]
    np.testing.assert_allclose([row["probability"] for row in rows], expected, rtol=1e-5)
    assert {row["model_version"] for row in rows} == {champion.version}
    assert [row["decision"] == "melanoma" for row in rows] == list(expected >= threshold)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m",
               f"models:/{clinic.model_name}@{CHAMPION}", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    with running(command, clinic.env, tmp_path / "mlflow-serve.log", url):
        status, answer = post(url, images_request(*contents))
        assert status == 200, answer
        predictions = answer["predictions"]
        np.testing.assert_allclose([p["probability"] for p in predictions], expected, rtol=1e-5)
        assert {p["model_version"] for p in predictions} == {champion.version}
        assert [p["melanoma"] for p in predictions] == list(expected >= threshold)
        assert post(url, images_request(b"not an image"))[0] == 400
