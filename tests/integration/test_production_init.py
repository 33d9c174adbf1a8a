"""The production init, run here the way docker/compose.yaml runs it, without a Docker
engine: the postgres image's init script against the local PostgreSQL, MLflow started by
docker/mlflow/serve.sh (basic auth, SQLite stores here), then docker/init/init-platform.sh
(`cme db upgrade` as the schema owner, `cme access init`, `cme deploy`) against them and a
Prefect server. Then the security the issue asks for: the workers' database user has no DDL
rights, and only the pipeline's account and the reviewers may change the registered model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from tests.mlflow_server import MlflowServer, start_mlflow_server
from tests.prefect_support import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POSTGRES = "127.0.0.1"
ADMIN_PASSWORD = "admin-test-secret"
SCHEMA_CHANGES = (
    "CREATE TABLE intruder (x integer)",
    "DROP TABLE images",
    "ALTER TABLE images ADD COLUMN note text",
    "TRUNCATE label_events",
)
WEBHOOK_SECRET = "init-test-webhook-secret"
WEBHOOK_URL = "http://127.0.0.1:5002/mlflow-webhook"  # no receiver needed to register it
ACCOUNTS = {
    "CME_PIPELINE_MLFLOW": ("pipeline", "pipeline-test-secret"),
    "CME_SERVING_MLFLOW": ("serving", "serving-test-secret"),
    "CME_REVIEWER_MLFLOW": ("reviewer", "reviewer-test-secret"),
}


@dataclass(frozen=True)
class Installation:
    names: dict[str, str]
    env: dict[str, str]
    mlflow: MlflowServer

    def url(self, role: str) -> str:
        return (
            f"postgresql+psycopg2://{self.names[role]}@{POSTGRES}:5432/{self.names['CME_DB_NAME']}"
        )


def _postgres_available() -> bool:
    if shutil.which("psql") is None:
        return False
    done = subprocess.run(["psql", "-h", POSTGRES, "-U", "postgres", "-c", "SELECT 1"],
                          capture_output=True, check=False)  # fmt: skip
    return done.returncode == 0


@pytest.fixture(scope="module")
def installation(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness: str
) -> Iterator[Installation]:
    if not _postgres_available():
        pytest.fail("psql and PostgreSQL on 127.0.0.1:5432 are needed (see README, Development)")
    suffix = uuid.uuid4().hex[:8]
    names = {
        "CME_DB_NAME": f"cme_{suffix}", "CME_DB_OWNER": f"cme_owner_{suffix}",
        "CME_DB_USER": f"cme_app_{suffix}", "MLFLOW_DB_NAME": f"mlflow_{suffix}",
        "MLFLOW_AUTH_DB_NAME": f"mlflow_auth_{suffix}", "MLFLOW_DB_USER": f"mlflow_{suffix}",
        "PREFECT_DB_NAME": f"prefect_{suffix}", "PREFECT_DB_USER": f"prefect_{suffix}",
    }  # fmt: skip
    secrets = {f"{k}_PASSWORD": f"{k.lower()}-test" for k in ("CME_DB_OWNER", "CME_DB")}
    secrets |= {"MLFLOW_DB_PASSWORD": "mlflow-test", "PREFECT_DB_PASSWORD": "prefect-test"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CME_", "MLFLOW_"))}
    database_env = clean | names | secrets | {"PGHOST": POSTGRES, "POSTGRES_USER": "postgres"}
    for _ in range(2):  # a second run changes nothing and fails on nothing
        done = run(["bash", "docker/postgres/init-databases.sh"], database_env)
        assert "ready" in done.stdout
    home = tmp_path_factory.mktemp("production")
    try:
        with start_mlflow_server(
            home / "mlflow", basic_auth_admin_password=ADMIN_PASSWORD
        ) as server:
            env = clean | {
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}",
                "CME_HOME": str(home / ".cme"), "CME_MODEL_NAME": f"melanoma-{suffix}",
                "CME_DATABASE_URL": f"postgresql+psycopg2://{names['CME_DB_OWNER']}@{POSTGRES}"
                                    f":5432/{names['CME_DB_NAME']}",
                "MLFLOW_TRACKING_URI": server.url, "PREFECT_API_URL": prefect_harness,
                "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "CME_WEBHOOK_SECRET": WEBHOOK_SECRET, "CME_WEBHOOK_URL": WEBHOOK_URL,
            }  # fmt: skip
            for prefix, (username, password) in ACCOUNTS.items():
                env |= {f"{prefix}_USERNAME": username, f"{prefix}_PASSWORD": password}
            yield Installation(names, env, server)
    finally:
        _drop(names)


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _drop(names: dict[str, str]) -> None:
    engine = create_engine(f"postgresql+psycopg2://postgres@{POSTGRES}:5432/postgres",
                           isolation_level="AUTOCOMMIT")  # fmt: skip
    with engine.connect() as connection:
        for key in ("CME_DB_NAME", "MLFLOW_DB_NAME", "MLFLOW_AUTH_DB_NAME", "PREFECT_DB_NAME"):
            connection.execute(text(f'DROP DATABASE IF EXISTS "{names[key]}" WITH (FORCE)'))
        for key in ("CME_DB_OWNER", "CME_DB_USER", "MLFLOW_DB_USER", "PREFECT_DB_USER"):
            connection.execute(text(f'DROP ROLE IF EXISTS "{names[key]}"'))
    engine.dispose()


@pytest.fixture(scope="module")
def initialised(installation: Installation) -> list[str]:
    """init-platform.sh, twice: the second run must find everything in place."""
    first = run(["bash", "docker/init/init-platform.sh"], installation.env)
    again = run(["bash", "docker/init/init-platform.sh"], installation.env)
    return [first.stdout, again.stdout]


def test_the_init_builds_the_schema_accounts_and_deployments_once(initialised, installation):
    first, again = initialised
    assert "label registry at revision" in first
    model = installation.env["CME_MODEL_NAME"]
    assert f"registered model {model}: created" in first
    assert f"registered model {model}: exists" in again
    for username, _ in ACCOUNTS.values():
        assert f"{username}: created" in first
        assert f"{username}: exists" in again
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        names = {d.name for d in client.read_deployments()}
        pools = {pool.name for pool in client.read_work_pools()}
    assert {"weekly", "gpu", "every-10-minutes", "hourly"} <= names
    assert {"cpu", "gpu"} <= pools


def test_the_init_registers_mlflows_webhook_to_the_receiver(initialised, installation, monkeypatch):
    first, again = initialised
    assert f"webhook cme-reviews created: model_version_tag.set, model_version_alias.created " \
        f"-> {WEBHOOK_URL}" in first  # fmt: skip
    assert "webhook cme-reviews updated" in again  # the one webhook, kept up to date
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")  # MLflow's webhook API is his
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    hooks = MlflowClient(installation.mlflow.url).list_webhooks()
    assert [(hook.name, hook.url) for hook in hooks] == [("cme-reviews", WEBHOOK_URL)]


def test_the_workers_database_user_writes_rows_but_no_schema(
    initialised, installation, generated_set, tmp_path
):
    worker_env = installation.env | {"CME_DATABASE_URL": installation.url("CME_DB_USER"),
                                     "CME_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    imported = run([sys.executable, "-m", "cme", "labels", "import",
                    str(generated_set / "metadata.csv"), "--images",
                    str(generated_set / "images"), "--steward", "lab"], worker_env)  # fmt: skip
    assert "0 quarantined" in imported.stdout

    engine = create_engine(installation.url("CME_DB_USER"))
    try:
        for ddl in SCHEMA_CHANGES:
            refused = pytest.raises(ProgrammingError, match=r"permission denied|must be owner")
            with refused, engine.begin() as connection:
                connection.execute(text(ddl))
        with engine.connect() as connection:
            count = connection.execute(text("SELECT count(*) FROM images")).scalar_one()
        assert count == len(list((generated_set / "images").iterdir()))
    finally:
        engine.dispose()


def test_only_the_pipeline_and_reviewers_change_the_registered_model(
    initialised, installation, monkeypatch
):
    model_name = installation.env["CME_MODEL_NAME"]

    def signed_in(prefix: str) -> MlflowClient:
        username, password = ACCOUNTS[prefix]
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        return MlflowClient(installation.mlflow.url)

    # The init created the model and the experiment as the admin: the pipeline writes to
    # them through its role's grants, not as their creator.
    pipeline = signed_in("CME_PIPELINE_MLFLOW")
    experiment = pipeline.get_experiment_by_name("melanoma-retrain").experiment_id
    run = pipeline.create_run(experiment).info
    source = f"{run.artifact_uri}/model"
    version = pipeline.create_model_version(model_name, source, run_id=run.run_id)
    pipeline.set_registered_model_alias(model_name, "challenger", version.version)

    reviewer = signed_in("CME_REVIEWER_MLFLOW")
    reviewer.set_model_version_tag(model_name, version.version, "approval", "approved")

    serving = signed_in("CME_SERVING_MLFLOW")
    assert serving.get_model_version_by_alias(model_name, "challenger").version == version.version
    for change in (
        lambda: serving.set_model_version_tag(model_name, version.version, "approval", "x"),
        lambda: serving.set_registered_model_alias(model_name, "champion", version.version),
        lambda: serving.create_run(experiment),
    ):
        with pytest.raises(MlflowException) as refused:
            change()
        assert refused.value.get_http_status_code() == 403
