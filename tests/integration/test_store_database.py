"""The label store's database as every repository shares it, on SQLite and on the real
PostgreSQL: which database errors are unavailable (retried) and which are faults (not), and,
on PostgreSQL, audit and lease writes that do not wait behind a label import."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.states import Failed
from sqlalchemy import create_engine, insert, text

from flows.common import is_transient
from pipelines.errors import Unavailable
from registry.audit_trail import AuditEvent, AuditTrailRepository
from registry.database import Database, StoreFault, StoreUnavailable
from registry.labels import LabelRepository
from registry.labels.orm import LesionRow
from registry.labels.repository import LABEL_WRITE_LOCK
from registry.run_leases import RunLeaseRepository
from tests.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def retried(error: BaseException) -> bool:
    return is_transient(None, None, Failed(data=error))  # type: ignore[arg-type]


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    opened = Database.open(database_url, migrate=True)
    yield opened
    opened.close()


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg2://nobody@127.0.0.1:1/none", "sqlite:////nonexistent-folder/labels.db"],
)
def test_a_database_that_cannot_be_reached_is_unavailable_and_retried(url: str) -> None:
    with pytest.raises(StoreUnavailable, match="label registry database error") as raised:
        Database.open(url, migrate=False)
    assert isinstance(raised.value, Unavailable) and retried(raised.value)


def test_sql_the_database_refuses_is_a_fault_and_not_retried(database: Database) -> None:
    """PostgreSQL answers a ProgrammingError, SQLite an OperationalError: both a defect."""
    with pytest.raises(StoreFault, match="no_such_table") as raised, database.reading() as c:
        c.execute(text("SELECT lesion_id FROM no_such_table"))
    assert not isinstance(raised.value, Unavailable) and not retried(raised.value)
    assert raised.value.exit_code == 4


def test_a_connection_lost_mid_query_is_unavailable(postgres_database: str) -> None:
    database = Database.open(postgres_database, migrate=False)
    admin = create_engine(POSTGRES_ADMIN_URL)
    try:
        with pytest.raises(StoreUnavailable) as raised, database.reading() as connection:
            backend = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with admin.connect() as terminator:
                terminator.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            connection.execute(text("SELECT 1"))
        assert retried(raised.value)
    finally:
        admin.dispose()
        database.close()


# -- writes that do not wait for a label import (PostgreSQL) --------------------------------


def test_audit_and_lease_writes_complete_while_a_label_import_holds_the_write_lock(
    postgres_database: str,
) -> None:
    """On PostgreSQL the label writes are serialised by an advisory lock; the audit trail
    and the run leases never take it. (On SQLite the whole file has one writer at a time.)"""
    database = Database.open(postgres_database, migrate=False)
    labels, trail = LabelRepository(database), AuditTrailRepository(database)
    leases = RunLeaseRepository(database)
    model, lease = f"melanoma-{uuid.uuid4().hex[:8]}", f"retrain-{uuid.uuid4().hex[:8]}"
    importing, release = threading.Event(), threading.Event()

    def label_import() -> None:  # an import's first statement, then the import goes on
        with database.writing(advisory_lock=LABEL_WRITE_LOCK) as connection:
            connection.execute(insert(LesionRow).values(lesion_id=f"L-{lease}", registered_at=NOW))
            importing.set()
            release.wait(timeout=30)

    with ThreadPoolExecutor(max_workers=4) as pool:
        held = pool.submit(label_import)
        try:
            assert importing.wait(timeout=10)
            audit = pool.submit(trail.record, decision(model))
            acquired = pool.submit(leases.acquire, lease, "worker-a", timedelta(minutes=5), NOW)
            assert audit.result(timeout=10).event_id is not None
            assert acquired.result(timeout=10) is not None
            waiting_label_write = pool.submit(labels.record_intake, [], [], NOW)
            assert not wait_for(waiting_label_write.done, seconds=1.0)  # the lock is held
        finally:
            release.set()
        held.result(timeout=10)
        assert waiting_label_write.result(timeout=10) == 0
    assert [event.version for event in trail.events(model)] == ["1"]
    assert leases.current(lease) is not None
    database.close()


def decision(model: str) -> AuditEvent:
    return AuditEvent(NOW, "pipeline", "decision", model, "1", "promote: every rule passed")


def wait_for(condition, seconds: float) -> bool:
    deadline = datetime.now(UTC) + timedelta(seconds=seconds)
    while datetime.now(UTC) < deadline:
        if condition():
            return True
        threading.Event().wait(0.05)
    return False


def test_a_folder_that_is_not_there_is_unavailable_only_as_a_connection(tmp_path: Path) -> None:
    """The same store, once its folder exists, opens: nothing about the URL was wrong."""
    url = f"sqlite:///{tmp_path / 'later' / 'labels.db'}"
    with pytest.raises(StoreUnavailable):
        Database.open(url, migrate=True)
    (tmp_path / "later").mkdir()
    Database.open(url, migrate=True).close()
