"""MLflow as the platform uses it: the tracking server (embedded SQLite by default) and the
experiment every training run goes to. Called by the stages, never at import."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cme.settings import Settings
from registry.labels.schema import ALEMBIC_LOCK


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached or used; the message names it."""


class NothingToEvaluate(LookupError):
    """No finished training run to evaluate; the message says what to run first."""


def use_tracking(settings: Settings) -> str:
    """Point MLflow at the tracking server and the experiment; return the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # logs, not a TTY
    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with ALEMBIC_LOCK:  # MLflow migrates a fresh SQLite store on first use
            experiment = mlflow.get_experiment_by_name(settings.experiment)
            if experiment is not None:
                experiment_id = str(experiment.experiment_id)
            else:
                experiment_id = _create_experiment(settings)
        mlflow.set_experiment(experiment_id=experiment_id)
    except MlflowException as error:
        raise TrackingUnavailable(f"MLflow at {uri}: {error.message}") from None
    return experiment_id


def _create_experiment(settings: Settings) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    location = None
    if _is_local(settings.mlflow_tracking_uri):
        settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
        location = settings.mlflow_artifacts_dir.resolve().as_uri()
    try:
        return str(mlflow.create_experiment(settings.experiment, artifact_location=location))
    except MlflowException:  # created meanwhile by a concurrent run
        experiment = mlflow.get_experiment_by_name(settings.experiment)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _is_local(uri: str) -> bool:
    """A store in a file (SQLite, a folder) keeps artifacts where the caller says; a server
    keeps them where it was configured to."""
    return not uri.startswith(("http://", "https://", "databricks"))


def git_commit(project_dir: Path, built_from: str | None = None) -> tuple[str, bool]:
    """The commit of the code that runs, and whether the work tree differs from it; outside a
    git checkout (a container image), the commit it was `built_from`."""
    try:
        commit = _git(project_dir, "rev-parse", "HEAD")
        dirty = bool(_git(project_dir, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return built_from or "unknown", False
    return commit, dirty


def _git(project_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(project_dir), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
