"""The installation's security as the init built it: the workers' database user writes rows
but no schema; only the pipeline's account and the reviewers change the registered model;
MLflow's webhook is the admin's and points at the receiver."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from tests.e2e.clinic import champion, label_registry_url, signed_in
from tests.e2e.topology import ADMIN, LOOPBACK, Topology

pytestmark = [pytest.mark.e2e]

SCHEMA_CHANGES = (
    "CREATE TABLE intruder (x integer)",
    "DROP TABLE images",
    "ALTER TABLE images ADD COLUMN note text",
    "TRUNCATE label_events",
)


def test_the_workers_database_user_writes_rows_but_no_schema(topology: Topology) -> None:
    engine = create_engine(label_registry_url(topology))
    try:
        for ddl in SCHEMA_CHANGES:
            refused = pytest.raises(ProgrammingError, match=r"permission denied|must be owner")
            with refused, engine.begin() as connection:
                connection.execute(text(ddl))
        with engine.connect() as connection:  # the inbox imported as this user
            assert connection.execute(text("SELECT count(*) FROM images")).scalar_one() > 0
    finally:
        engine.dispose()


def test_only_the_pipeline_and_reviewers_change_the_registered_model(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = topology.model_name
    serving = signed_in(topology, "CME_SERVING_MLFLOW", monkeypatch)
    version = champion(topology, serving)  # it reads: the scoring service follows the alias
    assert version is not None
    experiment = serving.get_experiment_by_name("melanoma-retrain").experiment_id
    for change in (
        lambda: serving.set_model_version_tag(model, version, "approval", "approved"),
        lambda: serving.set_registered_model_alias(model, "champion", version),
        lambda: serving.create_run(experiment),
    ):
        with pytest.raises(MlflowException) as refused:
            change()
        assert refused.value.get_http_status_code() == 403

    pipeline = signed_in(topology, "CME_PIPELINE_MLFLOW", monkeypatch)
    run = pipeline.create_run(experiment).info  # the init made the experiment as the admin
    pipeline.set_terminated(run.run_id, "KILLED")
    reviewer = signed_in(topology, "CME_REVIEWER_MLFLOW", monkeypatch)
    reviewer.set_model_version_tag(model, version, "note", "read at the tumour board")


def test_mlflows_webhook_is_the_admins_and_points_at_the_receiver(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", topology.password("MLFLOW_AUTH_ADMIN"))
    hooks = MlflowClient(topology.mlflow_url).list_webhooks()
    receiver = f"http://{LOOPBACK}:{topology.webhook_port}/mlflow-webhook"
    assert [(hook.name, hook.url) for hook in hooks] == [("cme-reviews", receiver)]
