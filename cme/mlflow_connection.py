"""MLflow as the platform uses it: the tracking server (embedded SQLite by default) and the
experiment every training run goes to. Called by the composition root, never at import."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cme.settings import Settings
from registry.labels.schema import ALEMBIC_LOCK
from registry.mlflow_errors import is_unreachable
from usecases.platform import TrackingRefused, TrackingUnavailable

if TYPE_CHECKING:
    from mlflow.exceptions import MlflowException


def use_tracking(settings: Settings) -> str:
    """Point MLflow at the tracking server and the experiment, created if missing; return the
    experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = _point_at_server(settings)
    try:
        with ALEMBIC_LOCK:  # MLflow migrates a fresh SQLite store on first use
            experiment = mlflow.get_experiment_by_name(settings.experiment)
            if experiment is not None:
                experiment_id = str(experiment.experiment_id)
            else:
                experiment_id = _create_experiment(settings)
        mlflow.set_experiment(experiment_id=experiment_id)
    except MlflowException as error:
        raise _tracking_error(uri, error) from error
    return experiment_id


def point_mlflow_at(settings: Settings, experiment_id: str) -> None:
    """Point MLflow at the tracking server and an experiment found before."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = _point_at_server(settings)
    try:
        mlflow.set_experiment(experiment_id=experiment_id)
    except MlflowException as error:
        raise _tracking_error(uri, error) from error


def _tracking_error(uri: str, error: MlflowException) -> TrackingUnavailable | TrackingRefused:
    """Unreachable (retried by the flows) or refused, told by the error's type."""
    kind = TrackingUnavailable if is_unreachable(error) else TrackingRefused
    return kind(f"MLflow at {uri}: {error.message}")


def _point_at_server(settings: Settings) -> str:
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # logs, not a TTY
    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


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
