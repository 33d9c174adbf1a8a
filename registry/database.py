"""The label store's database, shared by every repository over it (labels, the audit trail,
run leases, the prediction log): the engine (SQLite with its pragmas, or PostgreSQL), the
schema check, reading and writing transactions, and database errors translated into the
platform's kinds. ORM rows never leave the repositories.

Writes: on PostgreSQL a write is a plain transaction, unless the repository names an
advisory lock that serialises its writes with each other (the label writes do). On SQLite
every write begins IMMEDIATE: SQLite has one writer at a time for the whole database, so
there a lease or audit write still waits (up to the busy timeout) for a label import's
transaction to end.

Errors: only a failure to reach the database counts as unavailable (the flows retry it); a
write that lost a race is a concurrent change (retried too); any other error the database
answers with is a fault of the platform (never retried)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from pipelines.errors import BadInput, Fault, Retryable, Unavailable

SQLITE_BUSY_TIMEOUT_S = 30
_WRITER = "cme_writer"  # execution option: this connection's transaction writes

# SQLSTATEs of a server that cannot serve this connection now: connection exceptions
# (class 08), shutting down or starting up (57P01-57P03), too many connections (53300).
_UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
# Serialization failure and deadlock: a concurrent transaction won.
_LOST_RACE_SQLSTATES = ("40001", "40P01")
# SQLite result codes of a database file that cannot be opened or is busy with a writer.
_UNREACHABLE_SQLITE = ("SQLITE_CANTOPEN", "SQLITE_BUSY", "SQLITE_LOCKED")


class StoreUnavailable(Unavailable):
    """The label store's database cannot be reached (refused, lost or busy connection)."""


class SchemaOutOfDate(Unavailable):
    """The database schema is behind the code: run `cme db upgrade` (a worker that starts
    while the operator's migration runs succeeds on a retry)."""


class ConcurrentChange(Retryable):
    """Another writer changed the same rows first; this write was rolled back."""


class StoreFault(Fault):
    """The database answered with an error a retry would meet again (SQL the schema does not
    match, a value out of the column's range): a defect, reported, never retried."""


class StoreValueRefused(BadInput, ValueError):
    """A value the driver or a column type refused before it was sent."""


class StoreUrlUnusable(BadInput):
    """The database URL names no dialect or driver installed here."""


class Database:
    """One engine over the label store's database, with its transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate: bool) -> Database:
        """Connect; apply migrations when asked, else insist that the schema is current."""
        from registry.labels import schema  # the label store's migrations (frozen there)

        engine = _create_engine(url)
        with translated_errors():
            if migrate:
                schema.upgrade(engine)
            current, head = schema.current_revision(engine), schema.head_revision()
        if current != head:
            engine.dispose()
            raise SchemaOutOfDate(
                f"label registry schema is at {current or 'nothing'}, the code needs {head}: "
                "run `cme db upgrade`"
            )
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with translated_errors(), self.engine.connect() as connection:
            yield connection

    @contextmanager
    def writing(self, advisory_lock: int | None = None) -> Iterator[Connection]:
        """A write transaction. With `advisory_lock`, PostgreSQL serialises it with every
        other write naming the same lock, so checks made inside it see every change
        committed before it; without, it waits for nobody's lock but the rows it touches.
        SQLite begins IMMEDIATE either way (one writer at a time for the whole file)."""
        with translated_errors(), self.engine.connect() as connection:
            writer = connection.execution_options(**{_WRITER: True})
            with writer.begin():
                if advisory_lock is not None and writer.dialect.name == "postgresql":
                    writer.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_lock}
                    )
                yield writer


class Repository:
    """Base of the repositories over the database: built over the shared `Database` by the
    composition root, or opened alone (a tool, a test) with a database of its own."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @classmethod
    def open(cls, url: str, *, migrate: bool) -> Self:
        return cls(Database.open(url, migrate=migrate))

    def close(self) -> None:
        self.database.close()

    @property
    def backend(self) -> str:
        return self.database.backend


def insert_ignoring_duplicates(connection: Connection, table: Any, keys: list[str]) -> Any:
    """INSERT ... ON CONFLICT (keys) DO NOTHING, in the connection's dialect."""
    dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    return dialect_insert(table).on_conflict_do_nothing(index_elements=keys)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Database errors as the platform's kinds; the platform's own errors pass through."""
    try:
        yield
    except sa.IntegrityError as error:
        raise ConcurrentChange(
            "another change to the same images was saved at the same time; nothing of this "
            f"batch was written, run it again ({error.orig})"
        ) from error
    except sa.DBAPIError as error:
        raise translated(error) from error
    except sa.TimeoutError as error:  # no pooled connection came free in time
        raise StoreUnavailable(f"label registry database error: {error}") from error
    except sa.StatementError as error:  # a value the driver refused before sending it
        raise StoreValueRefused(f"label registry refused a value: {error.orig}") from error


def translated(error: sa.DBAPIError) -> StoreUnavailable | ConcurrentChange | StoreFault:
    """The kind of a database error: unreachable, a lost race, or a fault."""
    message = f"label registry database error: {error.orig}"
    if is_unreachable(error):
        return StoreUnavailable(message)
    if _sqlstate(error.orig) in _LOST_RACE_SQLSTATES:
        return ConcurrentChange(f"{message}; nothing was written, run it again")
    return StoreFault(message)


def is_unreachable(error: sa.DBAPIError) -> bool:
    """Whether the database could not be reached: SQLAlchemy saw the connection drop, or the
    driver could not connect (PostgreSQL: no SQLSTATE from a server, or a connection-class
    one; SQLite: the file cannot be opened or stays locked by another writer)."""
    if error.connection_invalidated:
        return True
    if not isinstance(error, sa.OperationalError | sa.InterfaceError):
        return False  # ProgrammingError, DataError, ...: the server answered, and refused
    sqlite_code = getattr(error.orig, "sqlite_errorname", None)
    if sqlite_code is not None:
        return str(sqlite_code).startswith(_UNREACHABLE_SQLITE)
    if hasattr(error.orig, "pgcode"):  # psycopg2
        sqlstate = _sqlstate(error.orig)
        return sqlstate is None or sqlstate.startswith(_UNREACHABLE_SQLSTATES)
    return False


def _sqlstate(driver_error: BaseException | None) -> str | None:
    code = getattr(driver_error, "pgcode", None)
    return str(code) if code else None


def _create_engine(url: str) -> Engine:
    try:
        return _engine_for(url)
    except sa.ArgumentError as error:
        raise StoreUrlUnusable(f"label registry URL is not usable: {error}") from None


def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event emits BEGIN itself
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    writer = connection.get_execution_options().get(_WRITER, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")
