"""The champion moves the moment a reviewer acts, end to end: a real `mlflow server` (SQL
backend) delivers its registry webhooks to `cme webhooks serve`, registered with `cme
webhooks register`; no `cme promote` runs in these tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.models import CHAMPION
from tests.webhook_support import (
    SECRET,
    WebhookInstallation,
    challenger_awaiting_review,
    champion_of,
    cme,
    eventually,
    webhook_installation,
)
from usecases.review_webhooks import signature

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookInstallation]:
    with webhook_installation(tmp_path_factory.mktemp("webhooks")) as installed:
        yield installed


def trail(installation: WebhookInstallation) -> list[tuple[str, str | None, str]]:
    events = installation.lifecycle.trail.events(installation.model_name)
    return [(e.action, e.version, e.actor) for e in events]


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_an_approval_in_the_registry_makes_the_champion_within_seconds(installation):
    lifecycle = installation.lifecycle
    version = challenger_awaiting_review(lifecycle, installation.client)
    before = trail(installation)

    started = time.monotonic()
    lifecycle.models.set_tags(version, {"reviewer": "dr-ruiz", "approval": "approved"})
    assert eventually(lambda: champion_of(installation) == version), (
        f"champion still {champion_of(installation)}; receiver log:\n"
        f"{installation.receiver_log.read_text()}"
    )
    took = time.monotonic() - started

    assert trail(installation)[len(before):] == [
        ("approval", version, "dr-ruiz"), ("promotion", version, "mlflow-webhook"),
    ]  # fmt: skip
    assert took < 15, f"the champion moved {took:.1f} s after the approval"
    history = lifecycle.models.client.get_model_version(installation.model_name, version)
    assert "approval by dr-ruiz" in history.description
    assert "promotion by mlflow-webhook" in history.description


def test_a_champion_alias_set_by_hand_on_an_unapproved_version_is_put_back(installation):
    lifecycle = installation.lifecycle
    unapproved = challenger_awaiting_review(lifecycle, installation.client)
    of_record = lifecycle.expected_champion()

    lifecycle.models.set_alias(CHAMPION, unapproved)  # as a hand in the MLflow UI would
    assert eventually(lambda: champion_of(installation) == of_record), (
        f"champion left on {champion_of(installation)}; receiver log:\n"
        f"{installation.receiver_log.read_text()}"
    )
    correction = trail(installation)[-1]
    assert correction == ("guard_correction", unapproved, "mlflow-webhook")


def test_unsigned_wrongly_signed_and_replayed_deliveries_are_refused(installation):
    body = json.dumps({"entity": "model_version_tag", "action": "set", "data": {
        "name": installation.model_name, "version": "1", "key": "approval",
        "value": "approved"}}).encode()  # fmt: skip
    delivery, at = f"test-{uuid.uuid4()}", str(int(time.time()))
    signed = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery,
              "X-MLflow-Timestamp": at,
              "X-MLflow-Signature": signature(SECRET, delivery, at, body)}  # fmt: skip
    before = trail(installation)

    unsigned = {k: v for k, v in signed.items() if k != "X-MLflow-Signature"}
    assert post(installation.receiver_url, body, unsigned)[0] == 401
    forged = signed | {"X-MLflow-Signature": signature("a-guessed-secret", delivery, at, body)}
    assert post(installation.receiver_url, body, forged)[0] == 401

    status, answer = post(installation.receiver_url, body, signed)
    assert status == 200, answer
    replayed, refusal = post(installation.receiver_url, body, signed)
    assert replayed == 409
    assert "received already" in refusal["error"]
    assert trail(installation) == before  # every review was already settled


def test_registering_again_updates_the_one_webhook(installation, tmp_path: Path):
    env = {"MLFLOW_TRACKING_URI": installation.server.url, "CME_WEBHOOK_SECRET": SECRET,
           "CME_MODEL_NAME": installation.model_name,
           "CME_HOME": str(tmp_path / "home")}  # fmt: skip
    again = cme("webhooks", "register", installation.receiver_url, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "webhook cme-reviews updated" in again.stdout
    hooks = installation.client.list_webhooks()
    assert [(hook.name, hook.url) for hook in hooks] == [("cme-reviews", installation.receiver_url)]

    no_secret = cme("webhooks", "register", installation.receiver_url,
                    env=env | {"CME_WEBHOOK_SECRET": ""}, cwd=tmp_path)  # fmt: skip
    assert no_secret.returncode == 2
    assert "set CME_WEBHOOK_SECRET" in no_secret.stderr
