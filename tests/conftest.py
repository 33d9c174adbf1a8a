"""Shared fixtures. The label registry tests run on SQLite and on the real PostgreSQL at
127.0.0.1:5432 (a fresh database per test session, dropped at the end)."""

from __future__ import annotations

import csv
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from registry.labels import ImageStore, IntakeRules, LabelRegistry, LabelRepository
from registry.labels.domain import METADATA_COLUMNS
from tests.installation_support import evaluated_installation  # noqa: F401 (session)
from tests.mlflow_server import mlflow_server  # noqa: F401 (a session fixture for every test)
from tests.prefect_support import platform, prefect_harness  # noqa: F401 (flow test fixtures)
from usecases.sample_data import SampleSpec, write_sample_data

POSTGRES_ADMIN_URL = os.environ.get(
    "CME_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
WITH_CONFIRMED_AT = (*METADATA_COLUMNS, "confirmed_at")
"""The HAM10000 columns plus the optional one that dates each confirmation."""
HAM10000 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ham10000"


# `make test` hands whole modules to its two workers (--dist loadscope, so that a module's
# fixtures are built once) in collection order (--no-loadscope-reorder, which asks for this
# order): the slowest modules go first, so that neither worker is left running a long one
# alone at the end (without it, xdist puts the modules with most tests first). The first
# builds the session's evaluated installation (tests/installation_support.py) while the
# other worker runs the demo; test_evaluation_run.py, its other user, comes once it is built.
SLOWEST_MODULES_FIRST = (
    "integration/test_training_run.py",
    "integration/test_demo.py",
    "integration/test_weekly_retrain.py",
    "unit/test_backbones.py",
    "integration/test_backtest_run.py",
    "integration/test_batch_screening.py",
    "unit/test_classifier.py",
    "integration/test_evaluation_run.py",
    "integration/test_serving.py",
    "integration/test_deployments.py",
    "integration/test_dataset_pipeline.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("loadscopereorder", True):
        return  # plain -n 2 hands out tests in chunks of consecutive ones: keep them mixed
    rank = {f"tests/{module}": place for place, module in enumerate(SLOWEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


# What MLflow keeps per process, that the composition root (`mlflow.set_tracking_uri`,
# `set_registry_uri`, `set_experiment`) and tests set: module attributes and the environment
# variables that hand them to subprocesses.
MLFLOW_PROCESS_STATE = {
    "mlflow.tracking._tracking_service.utils": "_tracking_uri",
    "mlflow.tracking._model_registry.utils": "_registry_uri",
    "mlflow.tracking.fluent": "_active_experiment_id",
}
MLFLOW_PROCESS_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")


@pytest.fixture(scope="module", autouse=True)
def mlflow_process_state() -> Iterator[None]:
    """Each test module leaves MLflow's process-wide tracking URI, registry URI and active
    experiment as it found them, so that no module depends on the modules that ran before
    it on its worker (an in-process flow points them at its own installation)."""
    environment = {name: os.environ.get(name) for name in MLFLOW_PROCESS_ENVIRONMENT}
    modules = {name: sys.modules.get(name) for name in MLFLOW_PROCESS_STATE}
    before = {name: getattr(module, MLFLOW_PROCESS_STATE[name], None)
              for name, module in modules.items()}  # fmt: skip
    yield
    for name, attribute in MLFLOW_PROCESS_STATE.items():
        module = sys.modules.get(name)
        if module is not None and hasattr(module, attribute):
            setattr(module, attribute, before[name])
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _postgres_reachable() -> str | None:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL)
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as error:  # any failure to connect means "not reachable"
        return str(error).splitlines()[0]


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, at the current schema."""
    problem = _postgres_reachable()
    if problem is not None:
        if os.environ.get("CME_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL required (CME_REQUIRE_POSTGRES) but unreachable: {problem}")
        pytest.skip(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {problem}")
    name = f"cme_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    LabelRepository.open(url, migrate=True).close()
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _empty_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        tables = "audit_events, lesion_splits, snapshots, label_events, images, lesions, "
        tables += "quarantine, run_leases, predictions, screenings"
        connection.execute(text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty label registry database: SQLite in a temp folder, or the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    url: str = request.getfixturevalue("postgres_database")
    _empty_postgres(url)
    return url


@pytest.fixture
def image_store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def registry(database_url: str, image_store: ImageStore) -> Iterator[LabelRegistry]:
    repository = LabelRepository.open(database_url, migrate=True)
    yield LabelRegistry(repository, image_store, IntakeRules())
    repository.close()


@pytest.fixture(scope="session")
def generated_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 generated 64-px images in the HAM10000 layout; never modified by tests."""
    folder = tmp_path_factory.mktemp("generated")
    write_sample_data(folder, SampleSpec(n=24, seed=7, image_size=64))
    return folder


@pytest.fixture
def lab_export(generated_set: Path, tmp_path: Path) -> Path:
    """A writable copy of the generated set (metadata.csv + images/) for one test."""
    target = tmp_path / "export"
    shutil.copytree(generated_set, target)
    return target


def read_rows(metadata: Path) -> list[dict[str, str]]:
    with metadata.open(newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def write_rows(
    metadata: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = METADATA_COLUMNS
) -> None:
    with metadata.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
