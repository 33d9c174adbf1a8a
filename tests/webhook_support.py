"""An installation whose champion moves on MLflow's webhooks: a real `mlflow server` of its
own (so that no other test's registry events reach the receiver), `cme webhooks serve` as a
process, and the webhook registered with `cme webhooks register`, as production runs them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mlflow import MlflowClient

from registry.audit_trail import AuditTrailRepository
from registry.models import CHAMPION, ModelRegistry
from registry.promotion import ChampionLifecycle, GateRecord
from tests.mlflow_server import MlflowServer, _free_port, start_mlflow_server

SECRET = "test-only-webhook-secret-" + "x" * 16
START_TIMEOUT_S = 60.0
DELIVERY_TIMEOUT_S = 20.0
T = TypeVar("T")
"""How long a test waits for what a webhook sets off: MLflow delivers within a second or
two (its list of webhooks is cached for a second in tests)."""


@dataclass(frozen=True)
class WebhookInstallation:
    server: MlflowServer
    receiver_url: str
    """http://127.0.0.1:PORT/mlflow-webhook"""
    model_name: str
    lifecycle: ChampionLifecycle
    """The test's own view of the registry and the audit trail the receiver writes."""
    receiver_log: Path

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.server.url, registry_uri=self.server.url)


def cme(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cme", *args], env={**os.environ, **env},
                          cwd=cwd, capture_output=True, text=True, timeout=120)  # fmt: skip


def challenger_awaiting_review(lifecycle: ChampionLifecycle, client: MlflowClient) -> str:
    """A challenger registered the way `cme evaluate` registers one that passed the gate
    (a tiny logged artifact stands in for the model): alias challenger, approval=pending,
    its decision in the audit trail."""
    experiment = f"reviews-{lifecycle.model_name}"
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name="challenger")
    client.log_text(run.info.run_id, "a stand-in for the trained model\n", "model/README.txt")
    client.set_terminated(run.info.run_id)
    record = GateRecord(
        model_uri=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        promote=True,
        needs_approval=True,
        summary="every rule passed",
        tags={"test_f1": "0.612", "test_roc_auc": "0.881"},
        evidence={"run_id": run.info.run_id},
        description="## Decision: promote\n\nevery rule passed\n",
    )
    outcome = lifecycle.register_challenger(record, "pipeline")
    assert outcome.version is not None
    return outcome.version


def champion_of(installation: WebhookInstallation) -> str | None:
    found = installation.lifecycle.models.aliased(CHAMPION)
    return found.version if found is not None else None


def eventually(what: Callable[[], T], timeout_s: float = DELIVERY_TIMEOUT_S) -> T:
    """`what()` once it is truthy; the last value when the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = what()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def _receiver(env: dict[str, str], folder: Path, log: Path) -> Iterator[str]:
    port = _free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "cme", "webhooks", "serve", "--port", str(port)],
            env={**os.environ, **env}, cwd=folder, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(f"{base}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cme webhooks serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield f"{base}/mlflow-webhook"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@contextlib.contextmanager
def webhook_installation(folder: Path) -> Iterator[WebhookInstallation]:
    model_name = f"melanoma-resnet50-{uuid.uuid4().hex[:8]}"
    audit_url = f"sqlite:///{folder / 'labels.db'}"
    trail = AuditTrailRepository.open(audit_url, migrate=True)
    with start_mlflow_server(folder / "mlflow") as server:
        env = {"MLFLOW_TRACKING_URI": server.url, "CME_MODEL_NAME": model_name,
               "CME_DATABASE_URL": audit_url, "CME_HOME": str(folder / "home"),
               "CME_WEBHOOK_SECRET": SECRET}  # fmt: skip
        log = folder / "receiver.log"
        with _receiver(env, folder, log) as receiver_url:
            registered = cme("webhooks", "register", receiver_url, env=env, cwd=folder)
            assert registered.returncode == 0, registered.stderr
            lifecycle = ChampionLifecycle(ModelRegistry.at(server.url, model_name), trail)
            yield WebhookInstallation(server, receiver_url, model_name, lifecycle, log)
    trail.close()
