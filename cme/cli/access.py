"""`cme access ...`: who may change the model registry (MLflow server with basic auth)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from cme.cli.common import EXIT_REFUSED, EXIT_UNAVAILABLE, command_group, fail

if TYPE_CHECKING:
    from usecases.registry_access import AccessSettings

app = command_group("Accounts and roles on an MLflow server run with --app-name basic-auth.")


@app.command("init")
def init() -> None:
    """Create the registered model and the experiment (as the admin, so that nobody else
    owns them), the cme-pipeline and cme-reviewer roles, the pipeline's service account, the
    read-only serving account and the first reviewer (from CME_*_MLFLOW_USERNAME/PASSWORD),
    signed in as MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD. Idempotent."""
    from cme.settings import Settings
    from usecases.registry_access import set_up_registry_access

    settings = Settings()
    access = _access_settings()
    with _registry_errors(settings.mlflow_tracking_uri):
        lines = set_up_registry_access(
            settings.mlflow_tracking_uri, settings.model_name, settings.experiment, access
        )
        for line in lines:
            typer.echo(line)


@app.command("add-reviewer")
def add_reviewer(
    username: str = typer.Argument(..., help="The reviewer's user name."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input, not a prompt."
    ),
) -> None:
    """Give a person the reviewer role (creating their account unless it exists)."""
    from cme.settings import Settings
    from usecases.registry_access import AccessNotSetUp, Account
    from usecases.registry_access import add_reviewer as added

    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else typer.prompt("password", hide_input=True, confirmation_prompt=True)
    )
    if not password:
        fail("the password is empty")
    settings = Settings()
    access = _access_settings()
    with _registry_errors(settings.mlflow_tracking_uri):
        try:
            created = added(settings.mlflow_tracking_uri, access, Account(username, password))
        except AccessNotSetUp as error:
            fail(str(error), EXIT_REFUSED)
    typer.echo(f"{username}: {'created' if created else 'exists'}, role cme-reviewer")


def _access_settings() -> AccessSettings:
    from pydantic import ValidationError

    from usecases.registry_access import AccessSettings

    try:
        return AccessSettings()
    except ValidationError as error:
        missing = ", ".join(str(e["loc"][0]) for e in error.errors())
        fail(f"set {missing} (see .env.example)")


@contextmanager
def _registry_errors(tracking_uri: str) -> Iterator[None]:
    """MLflow's refusals (exit 1) and outages (exit 3, told by the error's type) as a clear
    exit."""
    from mlflow.exceptions import MlflowException

    from registry.mlflow_errors import is_unreachable

    try:
        yield
    except MlflowException as error:
        code = EXIT_UNAVAILABLE if is_unreachable(error) else EXIT_REFUSED
        fail(f"MLflow at {tracking_uri}: {error.message}", code)
