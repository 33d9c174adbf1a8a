"""A reviewer approves the challenger in the real MLflow UI: the version's tags, set by a
click in Chromium, are what the REST API (and so `cme promote`) reads back."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image
from playwright.sync_api import Page

from registry.audit_trail import AuditTrailRepository
from registry.models import ModelRegistry
from registry.promotion import ChampionLifecycle, GateRecord
from tests.browser.mlflow_ui import (
    chromium_page,  # noqa: F401 (fixture)
    requires_chromium,
    set_version_tags_in_ui,
    version_page_screenshot,
)
from tests.mlflow_server import MlflowServer  # the `mlflow_server` fixture: tests/conftest.py

pytestmark = [pytest.mark.browser, pytest.mark.integration, requires_chromium]

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def artifacts_dir() -> Path:
    """Where tests leave files for people to look at: $CME_TEST_ARTIFACTS, else .cme/."""
    configured = os.environ.get("CME_TEST_ARTIFACTS")
    return Path(configured) if configured else ROOT / ".cme" / "test-artifacts"


def challenger_awaiting_review(lifecycle: ChampionLifecycle, client: MlflowClient) -> str:
    """A challenger registered the way `cme evaluate` registers one that passed the gate
    (a tiny logged artifact stands in for the model): alias challenger, approval=pending,
    its decision in the audit trail."""
    experiment_id = client.create_experiment(f"ui-approval-{lifecycle.model_name}")
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
    )
    outcome = lifecycle.register_challenger(record, "pipeline")
    assert outcome.version is not None
    return outcome.version


def cme(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cme", *args], env={**os.environ, **env},
                          cwd=cwd, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_reviewer_approves_the_challenger_in_the_mlflow_ui(
    mlflow_server: MlflowServer,
    chromium_page: Page,  # noqa: F811
    tmp_path: Path,
) -> None:
    # The server is shared by the session's tests: a model name of this test's own.
    model_name = f"melanoma-resnet50-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    audit_url = f"sqlite:///{tmp_path / 'labels.db'}"
    trail = AuditTrailRepository.open(audit_url, migrate=True)
    lifecycle = ChampionLifecycle(ModelRegistry(client, model_name), trail)
    version = challenger_awaiting_review(lifecycle, client)

    set_version_tags_in_ui(
        chromium_page,
        mlflow_server.url,
        model_name,
        version,
        {"approval": "approved", "reviewer": "dr-test"},
    )

    approved = client.get_model_version(model_name, version)
    assert approved.tags["approval"] == "approved"
    assert approved.tags["reviewer"] == "dr-test"
    assert approved.tags["decision"] == "promote"
    assert client.get_model_version_by_alias(model_name, "challenger").version == version

    # What the reviewer saw once approved, kept for people to look at (CI keeps the folder).
    screenshot = artifacts_dir() / "mlflow-version-approved.png"
    screenshot.unlink(missing_ok=True)
    version_page_screenshot(chromium_page, mlflow_server.url, model_name, version, screenshot)
    assert screenshot.read_bytes()[:8] == PNG_SIGNATURE
    assert screenshot.stat().st_size > 10_000
    with Image.open(screenshot) as image:
        image.verify()
    with Image.open(screenshot) as image:
        assert image.format == "PNG"
        assert image.width >= 1000
        assert image.height >= 600

    # The promotion flow's step, as a process: it reads the approval the UI left.
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "CME_MODEL_NAME": model_name,
           "CME_DATABASE_URL": audit_url, "CME_HOME": str(tmp_path / "home")}  # fmt: skip
    promoted = cme("promote", "--by", "promotion-flow", env=env, cwd=tmp_path)
    assert promoted.returncode == 0, promoted.stderr
    assert f"version {version} is now the champion (was none)" in promoted.stdout
    assert client.get_model_version_by_alias(model_name, "champion").version == version
    trail_actions = [(e.action, e.actor) for e in trail.events(model_name)]
    assert trail_actions == [
        ("decision", "pipeline"), ("approval", "dr-test"), ("promotion", "promotion-flow"),
    ]  # fmt: skip
    trail.close()
