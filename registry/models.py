"""The MLflow model registry, as the platform uses it: versions of one registered model,
the aliases `champion`, `challenger` and `previous-champion`, and version tags carrying the
evidence and the reviewer's approval. Stages are deprecated in MLflow and never used.

An adapter only: which version may serve is decided by `pipelines.gate` and recorded in
the audit trail (`registry.promotion`); this module moves aliases and reads and writes tags.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines.errors import BadInput, PlatformError, Refused, Unavailable
from registry.mlflow_errors import is_unreachable

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS_CHAMPION)

# Version tags. `approval` and `reviewer` are the ones reviewers edit in the MLflow UI.
APPROVAL = "approval"
REVIEWER = "reviewer"
DECISION = "decision"
PENDING, NOT_REQUIRED, APPROVED, REJECTED = "pending", "not-required", "approved", "rejected"

TAG_VALUE_LIMIT = 5000  # MLflow's limit for a model version tag value
DESCRIPTION_LIMIT = 5000  # and for a version's description
HISTORY_HEADING = "### History"
MODEL_SUMMARY = (
    "Melanoma vs not melanoma on dermoscopic images (cme). Aliases: champion serves, "
    "challenger awaits the gate or a reviewer, previous-champion is where `cme rollback` "
    "returns."
)


class ModelRegistryError(PlatformError):
    """The family of the model registry's errors; the message says why. Adds no kind: each
    error below is of exactly one."""


class ModelRegistryRefused(ModelRegistryError, Refused):
    """The MLflow registry refused what was asked (or a version failed to register)."""


class ModelRegistryUnavailable(ModelRegistryError, Unavailable):
    """The MLflow registry cannot be reached (told by the exception's type, not its text)."""


class UnknownVersion(ModelRegistryError, BadInput, LookupError):
    """No such version of the registered model."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as the platform reads it."""

    name: str
    version: str
    run_id: str | None
    source: str
    created_at: datetime
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def approval(self) -> str | None:
        return self.tags.get(APPROVAL)

    @property
    def reviewer(self) -> str | None:
        return self.tags.get(REVIEWER)

    @property
    def decision(self) -> str | None:
        return self.tags.get(DECISION)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class ModelRegistry:
    """Versions and aliases of one registered model (default `melanoma-resnet50`)."""

    def __init__(self, client: MlflowClient, model_name: str) -> None:
        self._client = client
        self.model_name = model_name

    @classmethod
    def at(cls, tracking_uri: str, model_name: str) -> ModelRegistry:
        from mlflow import MlflowClient

        return cls(MlflowClient(tracking_uri, registry_uri=tracking_uri), model_name)

    @property
    def client(self) -> MlflowClient:
        return self._client

    def register(
        self, model_uri: str, run_id: str, tags: Mapping[str, str], description: str = ""
    ) -> ModelVersion:
        """A new version of the model logged at `model_uri`, created with its tags and its
        description (Markdown, the version page's) at once: a version never exists without
        its evidence."""
        with _translated(self.model_name):
            self._ensure_registered_model()
            created = self._client.create_model_version(
                self.model_name,
                source=model_uri,
                run_id=run_id,
                tags={key: _tag_value(value) for key, value in tags.items()},
                description=_fitting(description) or None,
                model_id=_logged_model_id(model_uri),
            )
            return self._wait_until_ready(str(created.version))

    def describe_model(self, description: str) -> None:
        """The registered model's description (Markdown, the model page's)."""
        with _translated(self.model_name):
            self._client.update_registered_model(self.model_name, _fitting(description))

    def add_to_history(self, version: str, line: str) -> None:
        """Append `line` to the version description's history (who did what, when)."""
        with _translated(self.model_name, version):
            current = self._client.get_model_version(self.model_name, version).description or ""
            heading = "" if HISTORY_HEADING in current else f"\n\n{HISTORY_HEADING}\n"
            described = _fitting(f"{current.rstrip()}{heading}\n- {line}".lstrip())
            self._client.update_model_version(self.model_name, version, description=described)

    def version(self, version: str) -> ModelVersion:
        with _translated(self.model_name, version):
            return _model_version(self._client.get_model_version(self.model_name, version))

    def versions(self) -> list[ModelVersion]:
        """Every version, newest first."""
        with _translated(self.model_name):
            found = self._client.search_model_versions(
                f"name = '{self.model_name}'", order_by=["version_number DESC"]
            )
            return [_model_version(version) for version in found]

    def aliased(self, alias: str) -> ModelVersion | None:
        """The version an alias points at, or None when the alias (or the model) is not set."""
        return self.aliases().get(alias)

    def aliases(self) -> dict[str, ModelVersion]:
        with _translated(self.model_name):
            if not self._exists():
                return {}
            model = self._client.get_registered_model(self.model_name)
            return {alias: self.version(str(version)) for alias, version in model.aliases.items()}

    def set_alias(self, alias: str, version: str | None) -> None:
        """Point `alias` at `version`; None removes the alias."""
        with _translated(self.model_name, version):
            if version is not None:
                self._client.set_registered_model_alias(self.model_name, alias, version)
            elif alias in self._client.get_registered_model(self.model_name).aliases:
                self._client.delete_registered_model_alias(self.model_name, alias)

    def set_tags(self, version: str, tags: Mapping[str, str]) -> None:
        with _translated(self.model_name, version):
            for key, value in tags.items():
                self._client.set_model_version_tag(self.model_name, version, key, _tag_value(value))

    def subscribe(self, name: str, url: str, events: Sequence[str], secret: str) -> str:
        """Have the MLflow server deliver `events` to `url`, signed with `secret`, under the
        webhook `name`: created, or updated in place when a webhook of that name exists (so
        running it again changes nothing but what was asked). Says which it did. Webhooks
        are the server's, not the model's: the receiver filters by model name."""
        wanted: list[Any] = list(events)  # MLflow's client takes the event names as they are
        with _translated(self.model_name):
            existing = next((hook for hook in self._webhooks() if hook.name == name), None)
            if existing is None:
                self._client.create_webhook(name, url, wanted, secret=secret,
                                            status="ACTIVE")  # fmt: skip
                return "created"
            self._client.update_webhook(existing.webhook_id, url=url, events=wanted,
                                        secret=secret, status="ACTIVE")  # fmt: skip
            return "updated"

    def unsubscribe(self, name: str) -> bool:
        """Delete the webhook `name`; False when there was none."""
        with _translated(self.model_name):
            found = [hook for hook in self._webhooks() if hook.name == name]
            for hook in found:
                self._client.delete_webhook(hook.webhook_id)
            return bool(found)

    def _webhooks(self) -> list[Any]:
        hooks: list[Any] = []
        token: str | None = None
        while True:
            page = self._client.list_webhooks(max_results=100, page_token=token)
            hooks.extend(page)
            token = page.token
            if not token:
                return hooks

    def _exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(self.model_name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        if self._exists():
            return
        try:
            self._client.create_registered_model(
                self.model_name,
                description=MODEL_SUMMARY,
            )
        except MlflowException as error:  # created meanwhile by a concurrent registration
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _wait_until_ready(self, version: str, timeout_s: float = 300) -> ModelVersion:
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            found = self._client.get_model_version(self.model_name, version)
            if found.status == "READY":
                return _model_version(found)
            if found.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise ModelRegistryRefused(
                    f"{self.model_name} version {version} did not become ready "
                    f"({found.status}: {found.status_message})"
                )
            time.sleep(0.5)


def _model_version(found: Any) -> ModelVersion:
    return ModelVersion(
        name=found.name,
        version=str(found.version),
        run_id=found.run_id or None,
        source=found.source,
        created_at=datetime.fromtimestamp(found.creation_timestamp / 1000, tz=UTC),
        aliases=tuple(sorted(found.aliases or ())),
        tags=dict(found.tags or {}),
    )


def _logged_model_id(model_uri: str) -> str | None:
    """MLflow 3 logs models as LoggedModels addressed `models:/<model id>`."""
    prefix = "models:/"
    if model_uri.startswith(prefix) and "/" not in model_uri[len(prefix) :]:
        return model_uri[len(prefix) :]
    return None


def _tag_value(value: str) -> str:
    text = str(value)
    if len(text) <= TAG_VALUE_LIMIT:
        return text
    return text[: TAG_VALUE_LIMIT - 30] + " ... (full text in the audit)"


def _fitting(description: str) -> str:
    """The description within MLflow's limit: the evidence is cut, the history kept (its
    newest lines, should it outgrow the limit alone)."""
    if len(description) <= DESCRIPTION_LIMIT:
        return description
    evidence, heading, history = description.partition(HISTORY_HEADING)
    cut = "\n\n... (cut to fit MLflow's limit: the full report is on the run)\n\n"
    kept = heading + history
    room = DESCRIPTION_LIMIT - len(cut) - len(kept)
    if room < 0:
        return cut.lstrip() + kept[len(kept) - (DESCRIPTION_LIMIT - len(cut.lstrip())) :]
    return evidence[:room] + cut + kept


@contextmanager
def _translated(model_name: str, version: str | None = None) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UnknownVersion(f"{model_name} has no version {version}") from None
        if is_unreachable(error):
            raise ModelRegistryUnavailable(
                f"MLflow registry unreachable: {error.message.splitlines()[0]}"
            ) from error
        raise ModelRegistryRefused(f"MLflow registry refused: {error.message}") from error
