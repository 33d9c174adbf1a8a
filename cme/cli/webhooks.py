"""`cme webhooks serve` and `register`: the champion moves the moment a reviewer acts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from cme.cli.common import command_group, fail, opened_app

if TYPE_CHECKING:
    from usecases.review_webhooks import WebhookSettings

app = command_group(
    "Receive MLflow's registry webhooks: a reviewer's approval promotes at once, and a "
    "hand-moved champion alias is put back at once."
)


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: all)."),
    port: int = typer.Option(5002, "--port", help="Port to listen on."),
) -> None:
    """Answer POST /mlflow-webhook: check MLflow's signature (keyed by CME_WEBHOOK_SECRET),
    then finalise the reviews when a version's approval or reviewer tag is set, and run the
    alias guard when the champion alias moves."""
    from usecases.review_webhooks import ReceiverOptions, serve_webhooks

    settings = _webhook_settings()
    with opened_app() as cme:
        serve_webhooks(cme, settings, ReceiverOptions(host, port), announce=typer.echo)


@app.command("register")
def register(
    url: str = typer.Argument(
        ..., help="Where MLflow reaches the receiver, e.g. http://webhooks:5002/mlflow-webhook."
    ),
) -> None:
    """Create or update the webhook on the MLflow server, with the secret (idempotent). The
    server's webhook API is its admin's: sign in with MLFLOW_TRACKING_USERNAME/PASSWORD of
    the admin on a server run with basic auth."""
    from usecases.review_webhooks import register_webhook

    settings = _webhook_settings()
    with opened_app() as cme:
        typer.echo(register_webhook(cme, url, settings))


def _webhook_settings() -> WebhookSettings:
    from pydantic import ValidationError

    from usecases.review_webhooks import WebhookSettings

    try:
        return WebhookSettings()
    except ValidationError:
        fail("set CME_WEBHOOK_SECRET to a random secret of 16 characters or more (the same "
             "for `cme webhooks register` and `cme webhooks serve`)")  # fmt: skip
