"""The champion moves the moment a reviewer acts: MLflow's registry webhooks, received.

MLflow (3.3 and later) POSTs an event for each registry change to the webhooks registered
on its server, signed the Standard Webhooks way: `X-MLflow-Signature` is
`v1,<base64 HMAC-SHA256>` over `<delivery id>.<timestamp>.<raw body>`, keyed by the secret
given at registration. The receiver checks the signature, refuses a timestamp more than
five minutes off and a delivery it has handled already, then acts:

- a review tag (`approval`, `reviewer`) set on a version: the reviews are finalised at once,
  with the same checks as `cme promote` (the evidence again, the reviewer's name);
- the `champion` alias moved: the alias guard runs at once;
- anything else: answered 200 and logged, nothing done.

The promotion schedule stays the safety net for a delivery that never came. The payload
does not say who set a tag: the `reviewer` tag names the reviewer, as in `cme promote`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# At module level: FastAPI resolves the handlers' annotations in this module's namespace.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.errors import BadInput, Refused, Retryable
from registry.models import APPROVAL, CHAMPION, REVIEWER
from registry.promotion import ChampionLifecycle, Outcome
from usecases.http_server import body_within
from usecases.platform import Platform

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/mlflow-webhook"
WEBHOOK_NAME = "cme-reviews"
EVENTS = ("model_version_tag.set", "model_version_alias.created")
REVIEW_TAGS = (APPROVAL, REVIEWER)
ACTOR = "mlflow-webhook"
TIMESTAMP_TOLERANCE_S = 300
MAX_BODY_BYTES = 64 * 1024
"""A registry event is a few hundred bytes: anything far larger is not MLflow's."""

SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"
SIGNATURE_VERSION = "v1"


class WebhookSettings(BaseSettings):
    """The secret MLflow signs deliveries with (in compose: the .env file)."""

    model_config = SettingsConfigDict(extra="ignore")

    secret: SecretStr = Field(validation_alias="CME_WEBHOOK_SECRET", min_length=16)


class NotTheReceiver(BadInput, ValueError):
    """The URL given for the webhook is not the receiver's endpoint."""


class DeliveryRefused(BadInput):
    """A delivery that is not acted on: its HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    """A verified delivery: its id and the event MLflow sent."""

    delivery_id: str
    entity: str
    action: str
    data: Mapping[str, Any]

    @property
    def event(self) -> str:
        return f"{self.entity}.{self.action}"


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's signature of a delivery (mlflow/webhooks/delivery.py)."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


class DeliveryCheck:
    """Signature, freshness and replay checks; remembers the ids of deliveries it let through
    for as long as their timestamps stay acceptable (after that the timestamp refuses them)."""

    def __init__(self, secret: str, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        delivery_id, timestamp = headers.get(DELIVERY_HEADER), headers.get(TIMESTAMP_HEADER)
        given = headers.get(SIGNATURE_HEADER)
        if not (delivery_id and timestamp and given):
            raise DeliveryRefused(401, "unsigned: no delivery id, timestamp or signature")
        expected = signature(self._secret, delivery_id, timestamp, body).encode()
        # As bytes: headers arrive decoded as latin-1, and compare_digest refuses non-ASCII text.
        if not any(hmac.compare_digest(expected, one.encode("latin-1")) for one in given.split()):
            raise DeliveryRefused(401, "the signature does not match: check CME_WEBHOOK_SECRET")
        now = self._clock()
        if not timestamp.isdigit() or abs(now - int(timestamp)) > TIMESTAMP_TOLERANCE_S:
            raise DeliveryRefused(
                401, f"timestamp {timestamp} is more than {TIMESTAMP_TOLERANCE_S} s from now"
            )
        with self._lock:
            horizon = now - 2 * TIMESTAMP_TOLERANCE_S
            self._seen = {seen: at for seen, at in self._seen.items() if at >= horizon}
            if delivery_id in self._seen:
                raise DeliveryRefused(409, f"delivery {delivery_id} was received already")
            self._seen[delivery_id] = now
        return _parsed(delivery_id, body)

    def forget(self, delivery_id: str) -> None:
        """Let a delivery through again: it failed on our side and MLflow will retry it."""
        with self._lock:
            self._seen.pop(delivery_id, None)


def _parsed(delivery_id: str, body: bytes) -> Delivery:
    try:
        event = json.loads(body)
        return Delivery(delivery_id, str(event["entity"]), str(event["action"]),
                        dict(event.get("data") or {}))  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DeliveryRefused(400, f"not an MLflow webhook event: {error}") from None


class ReviewActions:
    """What a registry event sets off, one at a time (the lifecycle is not shared safely
    between threads, and two finalisations at once would record a review twice)."""

    def __init__(self, champions: ChampionLifecycle) -> None:
        self._champions = champions
        self._lock = threading.Lock()

    def act(self, delivery: Delivery) -> list[str]:
        """What was done, one line each; a line saying why nothing was done otherwise."""
        data = delivery.data
        if data.get("name") != self._champions.model_name:
            return [f"ignored: {delivery.event} of model {data.get('name')!r}"]
        if delivery.event == "model_version_tag.set" and data.get("key") in REVIEW_TAGS:
            return self._lines(lambda: self._champions.finalize(ACTOR),
                               f"version {data.get('version')}: reviews finalised")  # fmt: skip
        if delivery.event == "model_version_alias.created" and data.get("alias") == CHAMPION:
            return self._lines(lambda: _list(self._champions.guard(ACTOR)),
                               f"champion alias on version {data.get('version')} is the "
                               "champion of record")  # fmt: skip
        return [f"ignored: {delivery.event} ({_what(data)})"]

    def _lines(self, action: Callable[[], list[Outcome]], nothing: str) -> list[str]:
        with self._lock:
            outcomes = action()
        return [outcome.message for outcome in outcomes] or [f"{nothing}: nothing to change"]


def _list(outcome: Outcome | None) -> list[Outcome]:
    return [outcome] if outcome is not None else []


def _what(data: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {data[key]}" for key in ("version", "key", "alias") if key in data)


def webhook_app(
    check: DeliveryCheck, actions: ReviewActions, report: Callable[[str], None] = log.info
) -> Any:
    """The receiver's HTTP face: POST /mlflow-webhook, GET /health. `report` gets a line for
    each delivery: what it set off, or why it was refused."""
    app = FastAPI(title="cme MLflow webhook receiver", docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> Response:
        return Response("\n", status_code=200, media_type="application/json")

    @app.post(WEBHOOK_PATH)
    async def delivery(request: Request) -> Response:
        body, size = await body_within(request, MAX_BODY_BYTES)
        try:
            if size > MAX_BODY_BYTES:
                raise DeliveryRefused(413, f"body of {size:,} bytes is over {MAX_BODY_BYTES:,}")
            received = check.verify(request.headers, body)
        except DeliveryRefused as refused:
            report(f"delivery refused ({refused.status}): {refused.reason}")
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        status, lines = await asyncio.to_thread(_acted_on, received, actions)
        if status >= 500:
            check.forget(received.delivery_id)
        for line in lines:
            report(f"{received.event} (delivery {received.delivery_id}): {line}")
        return JSONResponse({"delivery": received.delivery_id, "outcome": lines},
                            status_code=status)  # fmt: skip

    return app


def _acted_on(delivery: Delivery, actions: ReviewActions) -> tuple[int, list[str]]:
    """The HTTP status and what was done. A refusal (the evidence, a missing version) is
    the answer to this event, not a failed delivery: 200. A system of record out of reach
    is 503, and a defect 500: MLflow retries both."""
    try:
        return 200, actions.act(delivery)
    except (Refused, BadInput) as refusal:
        return 200, [f"refused: {refusal}"]
    except Retryable as unavailable:
        log.warning("webhook %s: %s", delivery.delivery_id, unavailable)
        return 503, [f"unavailable: {unavailable}"]
    except Exception as fault:
        log.exception("webhook %s failed", delivery.delivery_id)
        return 500, [f"failed: {fault}"]


@dataclass(frozen=True)
class ReceiverOptions:
    host: str = "127.0.0.1"
    port: int = 5002


def serve_webhooks(
    platform: Platform,
    settings: WebhookSettings,
    options: ReceiverOptions,
    announce: Callable[[str], None] = print,
) -> None:
    """Receive MLflow's deliveries on host:port until interrupted (SIGINT or SIGTERM)."""
    import uvicorn

    from usecases.http_server import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    app = webhook_app(DeliveryCheck(settings.secret.get_secret_value()),
                      ReviewActions(platform.champions()), report=announce)  # fmt: skip
    announce(f"receiving MLflow webhooks for {platform.workspace.model_name} on "
             f"http://{options.host}:{options.port}{WEBHOOK_PATH}")  # fmt: skip
    uvicorn.run(app, host=options.host, port=options.port, log_level="info",
                timeout_graceful_shutdown=20)  # fmt: skip


def register_webhook(platform: Platform, url: str, settings: WebhookSettings) -> str:
    """Create or update the platform's webhook on the MLflow server; says which it did."""
    if not url.rstrip("/").endswith(WEBHOOK_PATH):
        raise NotTheReceiver(f"the receiver's URL ends in {WEBHOOK_PATH}: got {url}")
    done = platform.models().subscribe(
        WEBHOOK_NAME, url, EVENTS, settings.secret.get_secret_value()
    )
    return f"webhook {WEBHOOK_NAME} {done}: {', '.join(EVENTS)} -> {url}"
