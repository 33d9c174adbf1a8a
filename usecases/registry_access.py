"""Who may change the model registry, on an MLflow server run with `--app-name basic-auth`.

Everyone signed in reads (the server's `default_permission = READ`). Two roles write:
`cme-pipeline`, the service account the workers and the init service sign in as (experiments,
runs, the registered model's versions, tags and aliases), and `cme-reviewer`, the people who
approve or reject a challenger in the MLflow UI (the registered model: EDIT). A read-only
`serving` account lets `cme serve` follow the champion alias. The setup is idempotent: run
it again and it creates only what is missing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.errors import Refused

WORKSPACE = "default"
PIPELINE_ROLE = "cme-pipeline"
REVIEWER_ROLE = "cme-reviewer"


class AccessSettings(BaseSettings):
    """The accounts, from the environment (in compose: the .env file)."""

    model_config = SettingsConfigDict(extra="ignore")

    admin_username: str = Field(default="admin", validation_alias="MLFLOW_AUTH_ADMIN_USERNAME")
    admin_password: SecretStr = Field(validation_alias="MLFLOW_AUTH_ADMIN_PASSWORD")
    pipeline_username: str = Field(validation_alias="CME_PIPELINE_MLFLOW_USERNAME")
    pipeline_password: SecretStr = Field(validation_alias="CME_PIPELINE_MLFLOW_PASSWORD")
    serving_username: str | None = Field(
        default=None, validation_alias="CME_SERVING_MLFLOW_USERNAME"
    )
    serving_password: SecretStr | None = Field(
        default=None, validation_alias="CME_SERVING_MLFLOW_PASSWORD"
    )
    reviewer_username: str | None = Field(
        default=None, validation_alias="CME_REVIEWER_MLFLOW_USERNAME"
    )
    reviewer_password: SecretStr | None = Field(
        default=None, validation_alias="CME_REVIEWER_MLFLOW_PASSWORD"
    )


class AccessNotSetUp(Refused, LookupError):
    """The roles do not exist yet on that server."""


@dataclass(frozen=True)
class Account:
    username: str
    password: str


@dataclass(frozen=True)
class Grant:
    role: str
    resource_type: str
    resource_pattern: str
    permission: str


def grants(model_name: str) -> list[Grant]:
    return [
        Grant(PIPELINE_ROLE, "experiment", "*", "MANAGE"),
        Grant(PIPELINE_ROLE, "registered_model", model_name, "MANAGE"),
        Grant(REVIEWER_ROLE, "registered_model", model_name, "EDIT"),
    ]


class RegistryAccess:
    """The basic-auth app's admin API, signed in as its admin."""

    def __init__(self, tracking_uri: str, admin: Account) -> None:
        from mlflow.server.auth.client import AuthServiceClient
        from mlflow.utils import rest_utils

        untyped: Any = rest_utils  # MLflow's REST helpers carry no annotations
        creds = untyped.MlflowHostCreds(
            tracking_uri, username=admin.username, password=admin.password
        )

        class _AsAdmin(AuthServiceClient):
            def _request(self, endpoint: str, method: str, **kwargs: Any) -> Any:
                expected = kwargs.pop("expected_status", 200)
                response = untyped.http_request(creds, endpoint, method, **kwargs)
                response = untyped.verify_rest_response(response, endpoint, expected)
                return response.json() if response.content else {}

        self._client = _AsAdmin(tracking_uri)

    def ensure_user(self, account: Account) -> bool:
        """Create the user unless it exists (its password is then left as it is)."""
        from mlflow.exceptions import RestException

        try:
            self._client.get_user(account.username)
            return False
        except RestException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        self._client.create_user(account.username, account.password)
        return True

    @classmethod
    def as_admin(cls, tracking_uri: str, settings: AccessSettings) -> RegistryAccess:
        return cls(tracking_uri, _account(settings.admin_username, settings.admin_password))

    def ensure_registered_model(self, name: str) -> bool:
        """Create the registered model as the admin unless it exists: whoever creates one
        manages it, so it must not be left for the first signed-in user to claim."""
        return self._create("/api/2.0/mlflow/registered-models/create", {"name": name})

    def ensure_experiment(self, name: str) -> bool:
        return self._create("/api/2.0/mlflow/experiments/create", {"name": name})

    def _create(self, endpoint: str, body: dict[str, str]) -> bool:
        from mlflow.exceptions import RestException

        try:
            self._client._request(endpoint, "POST", json=body)
        except RestException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return False
        return True

    def role(self, name: str) -> Any | None:
        return next((r for r in self._client.list_roles(WORKSPACE) if r.name == name), None)

    def ensure_role(self, name: str, permissions: list[Grant]) -> Any:
        role = self.role(name)
        if role is None:
            role = self._client.create_role(WORKSPACE, name, description=_ROLE_PURPOSE[name])
        held = {
            (p.resource_type, p.resource_pattern, p.permission)
            for p in self._client.list_role_permissions(role.id)
        }
        for grant in permissions:
            if (grant.resource_type, grant.resource_pattern, grant.permission) not in held:
                self._client.add_role_permission(
                    role.id, grant.resource_type, grant.resource_pattern, grant.permission
                )
        return role

    def ensure_member(self, username: str, role: Any) -> None:
        if all(r.id != role.id for r in self._client.list_user_roles(username)):
            self._client.assign_role(username, role.id)


_ROLE_PURPOSE = {
    PIPELINE_ROLE: "The weekly retrain's service account: runs, model versions, aliases.",
    REVIEWER_ROLE: "Reviewers who approve or reject challengers (version tags) in the UI.",
}


def set_up_registry_access(
    tracking_uri: str, model_name: str, experiment: str, settings: AccessSettings
) -> Iterator[str]:
    """Create the registered model, the experiment, the roles, the service accounts and the
    first reviewer; yield what was done."""
    access = RegistryAccess.as_admin(tracking_uri, settings)
    created = access.ensure_registered_model(model_name)
    yield f"registered model {model_name}: {'created' if created else 'exists'}"
    created = access.ensure_experiment(experiment)
    yield f"experiment {experiment}: {'created' if created else 'exists'}"
    roles = {
        name: access.ensure_role(name, [g for g in grants(model_name) if g.role == name])
        for name in (PIPELINE_ROLE, REVIEWER_ROLE)
    }
    for role, account in _accounts(settings):
        created = access.ensure_user(account)
        if role is not None:
            access.ensure_member(account.username, roles[role])
        what = "created" if created else "exists"
        yield f"{account.username}: {what}, role {role or 'none (reads only)'}"


def add_reviewer(tracking_uri: str, settings: AccessSettings, reviewer: Account) -> bool:
    """A reviewer account (created unless it exists) in the reviewer role."""
    access = RegistryAccess.as_admin(tracking_uri, settings)
    role = access.role(REVIEWER_ROLE)
    if role is None:
        raise AccessNotSetUp(f"no role {REVIEWER_ROLE!r} on {tracking_uri}: run `cme access init`")
    created = access.ensure_user(reviewer)
    access.ensure_member(reviewer.username, role)
    return created


def _accounts(settings: AccessSettings) -> Iterator[tuple[str | None, Account]]:
    yield PIPELINE_ROLE, _account(settings.pipeline_username, settings.pipeline_password)
    if settings.serving_username and settings.serving_password:
        yield None, _account(settings.serving_username, settings.serving_password)
    if settings.reviewer_username and settings.reviewer_password:
        yield REVIEWER_ROLE, _account(settings.reviewer_username, settings.reviewer_password)


def _account(username: str, password: SecretStr) -> Account:
    return Account(username, password.get_secret_value())
