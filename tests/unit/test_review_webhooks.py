"""The webhook receiver's checks, on its HTTP face: only a delivery signed by MLflow with the
platform's secret, fresh and never seen, sets anything off; everything else is refused with
the status MLflow's delivery expects, and nothing is done."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from registry.models import ModelRegistryUnavailable
from registry.promotion import Outcome, PromotionRefused
from usecases.review_webhooks import (
    MAX_BODY_BYTES,
    WEBHOOK_PATH,
    DeliveryCheck,
    ReviewActions,
    signature,
    webhook_app,
)

SECRET = "a-secret-of-thirty-two-characters"
NOW = 1_800_000_000
MODEL = "melanoma-resnet50"


@dataclass
class Champions:
    """Stands in for the champion lifecycle: records what the receiver asked of it."""

    model_name: str = MODEL
    calls: list[str] = field(default_factory=list)
    fails_with: Exception | None = None
    reported: list[str] = field(default_factory=list)
    """What the receiver printed, a line per delivery."""

    def finalize(self, actor: str) -> list[Outcome]:
        self.calls.append(f"finalize by {actor}")
        if self.fails_with is not None:
            raise self.fails_with
        return [Outcome("version 3 is now the champion (was 2)", "3")]

    def guard(self, actor: str) -> Outcome | None:
        self.calls.append(f"guard by {actor}")
        return None


@pytest.fixture
def champions() -> Champions:
    return Champions()


@pytest.fixture
def http(champions: Champions) -> Iterator[TestClient]:
    check = DeliveryCheck(SECRET, clock=lambda: NOW)
    app = webhook_app(check, ReviewActions(champions), report=champions.reported.append)  # type: ignore[arg-type]
    with TestClient(app) as client:
        yield client


def event(action: str = "set", entity: str = "model_version_tag", **data: str) -> bytes:
    data = {"name": MODEL, "version": "3", "key": "approval", "value": "approved"} | data
    return json.dumps({"entity": entity, "action": action, "timestamp": "2027-01-15T10:00:00",
                       "data": data}).encode()  # fmt: skip


def headers(body: bytes, delivery: str = "d-1", at: int = NOW, secret: str = SECRET) -> dict:
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": str(at),
        "X-MLflow-Signature": signature(secret, delivery, str(at), body),
    }


def test_the_signature_is_the_one_mlflow_sends():
    body = event()
    mlflow_signs = _generate_hmac_signature(SECRET, "d-1", str(NOW), body.decode())
    assert signature(SECRET, "d-1", str(NOW), body) == mlflow_signs


def test_an_approval_finalises_the_reviews_at_once(http, champions):
    body = event()
    answer = http.post(WEBHOOK_PATH, content=body, headers=headers(body))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == ["version 3 is now the champion (was 2)"]
    assert champions.calls == ["finalize by mlflow-webhook"]
    assert champions.reported == [
        "model_version_tag.set (delivery d-1): version 3 is now the champion (was 2)"
    ]


def test_the_reviewer_tag_finalises_too_and_a_moved_champion_alias_runs_the_guard(http, champions):
    reviewer = event(key="reviewer", value="dr-ruiz")
    http.post(WEBHOOK_PATH, content=reviewer, headers=headers(reviewer, "d-1"))
    alias = event("created", "model_version_alias", alias="champion")
    answer = http.post(WEBHOOK_PATH, content=alias, headers=headers(alias, "d-2"))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == [
        "champion alias on version 3 is the champion of record: nothing to change"
    ]
    assert champions.calls == ["finalize by mlflow-webhook", "guard by mlflow-webhook"]


@pytest.mark.parametrize(
    "body",
    [
        event(key="test_f1", value="0.6"),  # not a review tag
        event("created", "model_version_alias", alias="challenger"),
        event("created", "model_version"),
        event(name="another-model"),
    ],
)
def test_events_it_does_not_act_on_are_answered_200_and_do_nothing(http, champions, body):
    answer = http.post(WEBHOOK_PATH, content=body, headers=headers(body))
    assert answer.status_code == 200
    assert answer.json()["outcome"][0].startswith("ignored: ")
    assert champions.calls == []


@pytest.mark.parametrize(
    ("forged", "reason"),
    [
        ({"X-MLflow-Signature": None}, "unsigned"),
        ({"X-MLflow-Delivery-Id": None}, "unsigned"),
        ({"secret": "somebody-else's-secret-value"}, "signature does not match"),
        ({"at": NOW - 301}, "more than 300 s from now"),
        ({"tampered": True}, "signature does not match"),
        ({"X-MLflow-Signature": b"v1,\xe9t\xe9"}, "signature does not match"),  # not ASCII
    ],
)
def test_a_missing_wrong_or_stale_signature_is_401_and_changes_nothing(
    http, champions, forged, reason
):
    body = event()
    sent = headers(body, at=forged.get("at", NOW), secret=forged.get("secret", SECRET))
    for name in ("X-MLflow-Signature", "X-MLflow-Delivery-Id"):
        if name in forged and forged[name] is None:
            del sent[name]
        elif name in forged:
            sent[name] = forged[name]
    if forged.get("tampered"):
        body = event(version="1")  # signed for version 3, sent for version 1
    answer = http.post(WEBHOOK_PATH, content=body, headers=sent)
    assert answer.status_code == 401
    assert reason in answer.json()["error"]
    assert champions.calls == []
    assert champions.reported == [f"delivery refused (401): {answer.json()['error']}"]


def test_a_replayed_delivery_is_refused(http, champions):
    body = event()
    assert http.post(WEBHOOK_PATH, content=body, headers=headers(body)).status_code == 200
    again = http.post(WEBHOOK_PATH, content=body, headers=headers(body))
    assert again.status_code == 409
    assert "received already" in again.json()["error"]
    assert champions.calls == ["finalize by mlflow-webhook"]


def test_an_oversized_or_unreadable_body_is_refused(http, champions):
    huge = b"{" + b" " * MAX_BODY_BYTES + b"}"
    assert http.post(WEBHOOK_PATH, content=huge, headers=headers(huge)).status_code == 413
    garbled = b"not json"
    answer = http.post(WEBHOOK_PATH, content=garbled, headers=headers(garbled, "d-2"))
    assert answer.status_code == 400
    assert champions.calls == []


def test_a_registry_out_of_reach_is_503_and_mlflows_retry_is_let_through(http, champions):
    champions.fails_with = ModelRegistryUnavailable("MLflow registry unreachable: refused")
    body = event()
    first = http.post(WEBHOOK_PATH, content=body, headers=headers(body))
    assert first.status_code == 503
    champions.fails_with = None
    retried = http.post(WEBHOOK_PATH, content=body, headers=headers(body))  # same delivery id
    assert retried.status_code == 200
    assert champions.calls == ["finalize by mlflow-webhook"] * 2


def test_a_refused_promotion_is_the_answer_not_a_failed_delivery(http, champions):
    champions.fails_with = PromotionRefused("version 3 was judged against champion 1")
    body = event()
    answer = http.post(WEBHOOK_PATH, content=body, headers=headers(body))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == ["refused: version 3 was judged against champion 1"]
