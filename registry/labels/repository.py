"""The label registry's storage, behind a small interface. ORM rows never leave this module."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    Select,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, StatementError

from registry.labels import schema
from registry.labels.domain import (
    AuditEvent,
    Diagnosis,
    ImageFacts,
    LabelEvent,
    LabelledImage,
    MatchedPrediction,
    PredictionRecord,
    QuarantinedRow,
    RegistryStats,
    RunLease,
    SnapshotRecord,
)
from registry.labels.errors import (
    ConcurrentChange,
    LabelRegistryError,
    RegistryUnavailable,
    SchemaOutOfDate,
)
from registry.labels.orm import (
    AuditEventRow,
    ImageRow,
    LabelEventRow,
    LesionRow,
    LesionSplitRow,
    PredictionRow,
    QuarantineRow,
    RunLeaseRow,
    SnapshotRow,
)

_CHUNK = 500  # ids per IN (...) clause, well under every backend's parameter limit
_WRITE_LOCK = 0x636D_656C  # PostgreSQL advisory lock that serializes label writes ("cmel")
_LEASE_NAME_MAX = 64  # run_leases.name
_LEASE_HOLDER_MAX = 256  # run_leases.holder
_PREDICTION_TEXT_MAX = {"model_name": 256, "model_version": 32, "source": 16, "image_name": 255}
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class RegisteredImage:
    """What the importer needs to know about an image already in the registry."""

    image_id: str
    lesion_id: str
    sha256: str
    diagnosis: Diagnosis
    version: int
    earlier_diagnoses: frozenset[Diagnosis] = frozenset()
    """Labels the image had before its current one: re-submitting one of them changes nothing."""


@dataclass(frozen=True)
class NewImage:
    image_id: str
    lesion_id: str
    facts: ImageFacts
    stored_path: str
    diagnosis: Diagnosis
    confirmed_at: datetime
    steward: str
    kind: str
    source: str | None


@dataclass(frozen=True)
class Rejection:
    source: str
    row_number: int | None
    image_id: str | None
    submitted: dict[str, str]
    reason_kind: str
    reason: str
    steward: str

    @property
    def fingerprint(self) -> str:
        """The same row refused for the same reason is quarantined once, however often sent."""
        key = [self.source, self.row_number, self.submitted, self.reason_kind]
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Relabel:
    image_id: str
    version: int
    diagnosis: Diagnosis
    steward: str
    reason: str
    confirmed_at: datetime


class LabelRepository:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def open(cls, url: str, *, migrate: bool) -> LabelRepository:
        """Connect; apply migrations when asked, else insist that the schema is current."""
        engine = _create_engine(url)
        with _translated_errors():
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
        self._engine.dispose()

    @property
    def backend(self) -> str:
        return self._engine.dialect.name

    # -- reading -------------------------------------------------------------------------

    def registered_images(self, image_ids: Iterable[str]) -> dict[str, RegisteredImage]:
        found: dict[str, RegisteredImage] = {}
        with self._reading() as connection:
            for chunk in _chunks(sorted(set(image_ids))):
                earlier: dict[str, set[Diagnosis]] = {}
                past = select(LabelEventRow).where(LabelEventRow.image_id.in_(chunk))
                for event_row in connection.execute(past):
                    earlier.setdefault(event_row.image_id, set()).add(_diagnosis(event_row))
                query = _current_labels().where(ImageRow.image_id.in_(chunk))
                for row in connection.execute(query):
                    image = _registered_image(row)
                    found[row.image_id] = replace(
                        image, earlier_diagnoses=frozenset(earlier.get(row.image_id, ()))
                    )
        return found

    def images_by_content(self, sha256s: Iterable[str]) -> dict[str, str]:
        """The image id registered with each of these contents, where one is."""
        found: dict[str, str] = {}
        with self._reading() as connection:
            for chunk in _chunks(sorted(set(sha256s))):
                query = (
                    select(ImageRow.sha256, ImageRow.image_id)
                    .where(ImageRow.sha256.in_(chunk))
                    .order_by(ImageRow.registered_at, ImageRow.image_id)
                )
                for sha256, image_id in connection.execute(query):
                    found.setdefault(sha256, image_id)
        return found

    def images_of_lesion(self, lesion_id: str) -> list[RegisteredImage]:
        with self._reading() as connection:
            query = _current_labels().where(ImageRow.lesion_id == lesion_id)
            return [_registered_image(row) for row in connection.execute(query)]

    def lesion_diagnoses(self, lesion_ids: Iterable[str]) -> dict[str, str]:
        """The diagnosis of each registered lesion (one per lesion, by the registry's rule)."""
        diagnoses: dict[str, str] = {}
        with self._reading() as connection:
            for chunk in _chunks(sorted(set(lesion_ids))):
                query = _current_labels().where(ImageRow.lesion_id.in_(chunk))
                for row in connection.execute(query):
                    diagnoses[row.lesion_id] = row.dx
        return diagnoses

    def is_stored_path_referenced(self, stored_path: str) -> bool:
        with self._reading() as connection:
            query = select(ImageRow.image_id).where(ImageRow.stored_path == stored_path).limit(1)
            return connection.execute(query).first() is not None

    def current_labels(
        self, *, since: datetime | None = None, sources: Sequence[str] | None = None
    ) -> Iterator[LabelledImage]:
        query = _current_labels()
        if since is not None:
            query = query.where(LabelEventRow.confirmed_at >= since)
        if sources:
            query = query.where(LabelEventRow.dx_type.in_(list(sources)))
        query = query.order_by(ImageRow.image_id)
        with self._reading() as connection:
            for row in connection.execution_options(yield_per=2000).execute(query):
                yield _labelled_image(row)

    def history(self, image_id: str) -> list[LabelEvent]:
        query = (
            select(LabelEventRow)
            .where(LabelEventRow.image_id == image_id)
            .order_by(LabelEventRow.version)
        )
        with self._reading() as connection:
            return [_label_event(row) for row in connection.execute(query)]

    def quarantined(self) -> list[QuarantinedRow]:
        query = select(QuarantineRow).order_by(QuarantineRow.quarantine_id)
        with self._reading() as connection:
            return [_quarantined_row(row) for row in connection.execute(query)]

    def stats(self) -> RegistryStats:
        with self._reading() as connection:
            current = _current_labels().subquery()
            by_dx = _grouped_counts(connection, current.c.dx)
            by_dx_type = _grouped_counts(connection, current.c.dx_type)
            by_reason = _grouped_counts(connection, QuarantineRow.reason_kind)
            return RegistryStats(
                images=_count(connection, ImageRow),
                lesions=_count(connection, LesionRow),
                label_events=_count(connection, LabelEventRow),
                quarantined=_count(connection, QuarantineRow),
                by_dx=by_dx,
                by_dx_type=by_dx_type,
                quarantine_by_reason=by_reason,
            )

    def locked_splits(self) -> dict[str, str]:
        """Every lesion's split as first recorded by a snapshot."""
        with self._reading() as connection:
            rows = connection.execute(select(LesionSplitRow.lesion_id, LesionSplitRow.split))
            return {lesion_id: split for lesion_id, split in rows}

    def snapshots(self) -> list[SnapshotRecord]:
        """Every snapshot, oldest first."""
        query = select(SnapshotRow).order_by(SnapshotRow.created_at, SnapshotRow.snapshot_id)
        with self._reading() as connection:
            return [_snapshot_record(row) for row in connection.execute(query)]

    def snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        query = select(SnapshotRow).where(SnapshotRow.snapshot_id == snapshot_id)
        with self._reading() as connection:
            row = connection.execute(query).first()
            return _snapshot_record(row) if row is not None else None

    def audit_events(
        self, model_name: str, *, limit: int | None = None, newest_first: bool = False
    ) -> list[AuditEvent]:
        """The model's audit trail, oldest first (or the newest `limit` events first)."""
        order = AuditEventRow.event_id.desc() if newest_first else AuditEventRow.event_id
        query = select(AuditEventRow).where(AuditEventRow.model_name == model_name).order_by(order)
        if limit is not None:
            query = query.limit(limit)
        with self._reading() as connection:
            return [_audit_event(row) for row in connection.execute(query)]

    def lease(self, name: str) -> RunLease | None:
        """The run lease of that name as recorded, expired or not; None when nobody holds it."""
        query = select(RunLeaseRow).where(RunLeaseRow.name == name)
        with self._reading() as connection:
            row = connection.execute(query).first()
            return _run_lease(row) if row is not None else None

    def predictions(
        self, model_name: str, *, since: datetime | None = None
    ) -> list[PredictionRecord]:
        """The model's logged predictions (made at or after `since`), oldest first."""
        query = _of_model(select(PredictionRow), model_name, since)
        with self._reading() as connection:
            return [_prediction_record(row) for row in connection.execute(query)]

    def matched_predictions(
        self,
        model_name: str,
        *,
        sources: Sequence[str] | None = None,
        since: datetime | None = None,
    ) -> list[MatchedPrediction]:
        """The model's logged predictions of registered images, each beside the image's
        current label (of a source in `sources`), oldest first. A prediction of an image the
        registry does not hold (yet) is left out."""
        current = _current_labels().subquery()
        # When a label of a listed source first reached the registry: a consensus label
        # registered before the prediction and a biopsy result after it is a later label.
        first = select(
            LabelEventRow.image_id, func.min(LabelEventRow.recorded_at).label("arrived_at")
        )
        if sources:
            first = first.where(LabelEventRow.dx_type.in_(list(sources)))
        arrival = first.group_by(LabelEventRow.image_id).subquery()
        query: Select[Any] = (
            select(
                *PredictionRow.__table__.columns,
                current.c.image_id,
                current.c.lesion_id,
                current.c.dx,
                current.c.dx_type,
                arrival.c.arrived_at.label("label_arrived_at"),
                current.c.confirmed_at,
            )
            .join(current, current.c.sha256 == PredictionRow.image_sha256)
            .join(arrival, arrival.c.image_id == current.c.image_id)
        )
        if sources:
            query = query.where(current.c.dx_type.in_(list(sources)))
        query = _of_model(query, model_name, since).order_by(  # first registered first
            current.c.registered_at, current.c.image_id
        )
        matched: list[MatchedPrediction] = []
        with self._reading() as connection:
            for row in connection.execute(query):
                if matched and matched[-1].prediction.prediction_id == row.prediction_id:
                    # The same content under two image ids (two concurrent imports can both
                    # pass the duplicate check): the first registered counts, as at intake.
                    continue
                matched.append(_matched_prediction(row))
        return matched

    # -- writing -------------------------------------------------------------------------

    def record_predictions(self, records: Sequence[PredictionRecord]) -> int:
        """Append predictions to the log, all in one transaction; returns how many.

        Not a label write, so it takes no write lock: a serving process logging predictions
        never waits for a label import. On SQLite a plain BEGIN is enough, as the transaction
        only inserts."""
        if not records:
            return 0
        for record in records:
            _check_prediction(record)
        with _translated_errors(), self._engine.begin() as connection:
            connection.execute(insert(PredictionRow), [_prediction_values(r) for r in records])
        return len(records)

    def acquire_lease(
        self, name: str, holder: str, ttl: timedelta, now: datetime
    ) -> RunLease | None:
        """Take the named lease until `now + ttl` when it is free, lapsed (a crashed holder)
        or already `holder`'s (then it is renewed); None while another holder's claim runs."""
        _check_lease(name, holder, ttl, now)
        with self._writing() as connection:
            row = connection.execute(select(RunLeaseRow).where(RunLeaseRow.name == name)).first()
            if row is None:
                lease = RunLease(name, holder, now, now, now + ttl)
                connection.execute(insert(RunLeaseRow).values(_run_lease_values(lease)))
                return _in_utc(lease)
            current = _run_lease(row)
            if current.holder != holder and not current.is_expired(now):
                return None
            acquired_at = current.acquired_at if current.holder == holder else now
            lease = RunLease(name, holder, acquired_at, now, now + ttl)
            connection.execute(
                update(RunLeaseRow).where(RunLeaseRow.name == name).values(_run_lease_values(lease))
            )
            return _in_utc(lease)

    def renew_lease(self, name: str, holder: str, ttl: timedelta, now: datetime) -> RunLease | None:
        """Extend `holder`'s lease to `now + ttl`, even a lapsed one nobody took; None when
        `holder` no longer holds it."""
        _check_lease(name, holder, ttl, now)
        with self._writing() as connection:
            row = connection.execute(select(RunLeaseRow).where(RunLeaseRow.name == name)).first()
            if row is None or row.holder != holder:
                return None
            lease = replace(_run_lease(row), renewed_at=now, expires_at=now + ttl)
            connection.execute(
                update(RunLeaseRow)
                .where(RunLeaseRow.name == name)
                .values(renewed_at=lease.renewed_at, expires_at=lease.expires_at)
            )
            return _in_utc(lease)

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up if `holder` holds it; False when it held nothing to give up."""
        with self._writing() as connection:
            released = connection.execute(
                delete(RunLeaseRow).where(RunLeaseRow.name == name, RunLeaseRow.holder == holder)
            )
            return bool(released.rowcount)

    def record_audit_event(self, event: AuditEvent) -> AuditEvent:
        """Append one event to the audit trail; returns it with its id."""
        values = {
            name: getattr(event, name)
            for name in AuditEvent.__dataclass_fields__
            if name != "event_id"
        }
        with self._writing() as connection:
            inserted = insert(AuditEventRow).values(values).returning(AuditEventRow.event_id)
            event_id = connection.execute(inserted).scalar_one()
        return replace(event, event_id=int(event_id))

    def record_snapshot(self, record: SnapshotRecord, splits: Mapping[str, str]) -> None:
        """Record a snapshot and lock the split of each of its lesions not locked before, in
        one transaction. A lesion locked meanwhile in another split refuses the whole record."""
        with self._writing() as connection:
            connection.execute(insert(SnapshotRow), [_snapshot_values(record)])
            locked = dict(
                connection.execute(select(LesionSplitRow.lesion_id, LesionSplitRow.split)).all()
            )
            moved = sorted(
                lesion for lesion, split in splits.items() if locked.get(lesion, split) != split
            )
            if moved:
                raise ConcurrentChange(
                    f"lesion {moved[0]} is locked in split {locked[moved[0]]}, the snapshot puts "
                    f"it in {splits[moved[0]]}; nothing was recorded, take the snapshot again"
                )
            fresh = [
                {"lesion_id": lesion, "split": split, "snapshot_id": record.snapshot_id,
                 "assigned_at": record.created_at}
                for lesion, split in sorted(splits.items())
                if lesion not in locked
            ]  # fmt: skip
            if fresh:
                connection.execute(insert(LesionSplitRow), fresh)

    def record_intake(
        self, images: Sequence[NewImage], rejections: Sequence[Rejection], now: datetime
    ) -> int:
        """Register images (each with its first label event) and quarantine rejections, all in
        one transaction. Returns how many rejections were new to the quarantine."""
        with self._writing() as connection:
            lesion_ids = sorted({image.lesion_id for image in images})
            if lesion_ids:
                connection.execute(
                    _insert_ignoring_duplicates(connection, LesionRow, ["lesion_id"]),
                    [{"lesion_id": lesion, "registered_at": now} for lesion in lesion_ids],
                )
            if images:
                connection.execute(insert(ImageRow), [_image_values(i, now) for i in images])
                connection.execute(
                    insert(LabelEventRow), [_first_event_values(i, now) for i in images]
                )
            _refuse_lesions_with_two_diagnoses(connection, lesion_ids)
            return self._quarantine(connection, rejections, now)

    def append_relabels(self, relabels: Sequence[Relabel], now: datetime) -> None:
        """Append one label event per image, in one transaction."""
        with self._writing() as connection:
            connection.execute(
                insert(LabelEventRow),
                [
                    {
                        "image_id": relabel.image_id,
                        "version": relabel.version,
                        "kind": "relabel",
                        **_diagnosis_values(relabel.diagnosis),
                        "steward": relabel.steward,
                        "confirmed_at": relabel.confirmed_at,
                        "recorded_at": now,
                        "reason": relabel.reason,
                        "source": None,
                    }
                    for relabel in relabels
                ],
            )
            lesions = select(ImageRow.lesion_id).where(
                ImageRow.image_id.in_([relabel.image_id for relabel in relabels])
            )
            _refuse_lesions_with_two_diagnoses(
                connection, sorted(set(connection.execute(lesions).scalars()))
            )

    def refresh_planner_statistics(self) -> None:
        """Give the query planner the row counts of the label tables after a bulk intake.
        Until autovacuum comes round, PostgreSQL plans for the nearly empty tables it last
        measured, and reading the current labels as a cursor then joins 10,000 label events
        to 10,000 others in a nested loop (3 s instead of 30 ms). SQLite is told the same.
        Without owner rights PostgreSQL skips the tables with a warning, and planning is as
        before."""
        with self._writing() as connection:
            for table in _LABEL_TABLES:
                connection.execute(text(f"ANALYZE {table}"))

    def _quarantine(
        self, connection: Connection, rejections: Sequence[Rejection], now: datetime
    ) -> int:
        if not rejections:
            return 0
        unique = {rejection.fingerprint: rejection for rejection in rejections}
        existing: set[str] = set()
        for chunk in _chunks(sorted(unique)):
            query = select(QuarantineRow.fingerprint).where(QuarantineRow.fingerprint.in_(chunk))
            existing.update(connection.execute(query).scalars())
        fresh = [rejection for key, rejection in unique.items() if key not in existing]
        if fresh:
            connection.execute(
                _insert_ignoring_duplicates(connection, QuarantineRow, ["fingerprint"]),
                [_rejection_values(rejection, now) for rejection in fresh],
            )
        return len(fresh)

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with _translated_errors(), self._engine.connect() as connection:
            yield connection

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction, serialized with every other label write: PostgreSQL takes an
        advisory lock, SQLite begins IMMEDIATE. Checks made inside it therefore see every
        change committed before it."""
        with _translated_errors(), self._engine.connect() as connection:
            writer = connection.execution_options(cme_writer=True)
            with writer.begin():
                if writer.dialect.name == "postgresql":
                    writer.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WRITE_LOCK})
                yield writer


_LABEL_TABLES = (
    LesionRow.__tablename__,
    ImageRow.__tablename__,
    LabelEventRow.__tablename__,
    LesionSplitRow.__tablename__,
)


def _create_engine(url: str) -> Engine:
    try:
        return _engine_for(url)
    except ArgumentError as error:
        raise LabelRegistryError(f"label registry URL is not usable: {error}") from None


def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
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
    writer = connection.get_execution_options().get("cme_writer", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


def _refuse_lesions_with_two_diagnoses(connection: Connection, lesion_ids: Sequence[str]) -> None:
    """Inside a write transaction: a lesion has one diagnosis, whatever was committed before."""
    for chunk in _chunks(lesion_ids):
        current = _current_labels().where(ImageRow.lesion_id.in_(chunk)).subquery()
        split = (
            select(current.c.lesion_id)
            .group_by(current.c.lesion_id)
            .having(func.count(func.distinct(current.c.dx)) > 1)
        )
        conflicting = list(connection.execute(split).scalars())
        if conflicting:
            raise ConcurrentChange(
                f"lesion {conflicting[0]} was given another diagnosis by a concurrent change; "
                "nothing of this batch was written"
            )


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except LabelRegistryError:
        raise
    except IntegrityError as error:
        raise ConcurrentChange(
            "another change to the same images was saved at the same time; nothing of this "
            f"batch was written, run it again ({error.orig})"
        ) from error
    except DBAPIError as error:
        raise RegistryUnavailable(f"label registry database error: {error.orig}") from error
    except StatementError as error:  # a value the driver refused before sending it
        raise LabelRegistryError(f"label registry refused a value: {error.orig}") from error


def _insert_ignoring_duplicates(connection: Connection, table: Any, keys: list[str]) -> Any:
    dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    return dialect_insert(table).on_conflict_do_nothing(index_elements=keys)


def _current_labels() -> Select[Any]:
    latest = (
        select(LabelEventRow.image_id, func.max(LabelEventRow.version).label("version"))
        .group_by(LabelEventRow.image_id)
        .subquery()
    )
    return (
        select(
            *ImageRow.__table__.columns,
            LabelEventRow.version,
            LabelEventRow.dx,
            LabelEventRow.dx_type,
            LabelEventRow.age,
            LabelEventRow.sex,
            LabelEventRow.localization,
            LabelEventRow.steward,
            LabelEventRow.confirmed_at,
        )
        .join(latest, latest.c.image_id == ImageRow.image_id)
        .join(
            LabelEventRow,
            and_(
                LabelEventRow.image_id == latest.c.image_id,
                LabelEventRow.version == latest.c.version,
            ),
        )
    )


def _of_model(query: Select[Any], model_name: str, since: datetime | None) -> Select[Any]:
    """Only the model's predictions made at or after `since`, oldest first."""
    query = query.where(PredictionRow.model_name == model_name)
    if since is not None:
        query = query.where(PredictionRow.predicted_at >= since)
    return query.order_by(PredictionRow.predicted_at, PredictionRow.prediction_id)


def _count(connection: Connection, table: Any) -> int:
    return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def _grouped_counts(connection: Connection, column: Any) -> dict[str, int]:
    rows = connection.execute(select(column, func.count()).group_by(column).order_by(column))
    return {str(key): int(total) for key, total in rows}


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _diagnosis(row: Row[Any]) -> Diagnosis:
    return Diagnosis(
        dx=row.dx, dx_type=row.dx_type, age=row.age, sex=row.sex, localization=row.localization
    )


def _diagnosis_values(diagnosis: Diagnosis) -> dict[str, Any]:
    return {
        "dx": diagnosis.dx,
        "dx_type": diagnosis.dx_type,
        "age": diagnosis.age,
        "sex": diagnosis.sex,
        "localization": diagnosis.localization,
    }


def _registered_image(row: Row[Any]) -> RegisteredImage:
    image = row
    return RegisteredImage(
        image_id=image.image_id,
        lesion_id=image.lesion_id,
        sha256=image.sha256,
        diagnosis=_diagnosis(row),
        version=row.version,
    )


def _labelled_image(row: Row[Any]) -> LabelledImage:
    image = row
    return LabelledImage(
        image_id=image.image_id,
        lesion_id=image.lesion_id,
        diagnosis=_diagnosis(row),
        confirmed_at=row.confirmed_at,
        steward=row.steward,
        facts=ImageFacts(
            sha256=image.sha256,
            width=image.width,
            height=image.height,
            format=image.format,
            mode=image.mode,
            byte_size=image.byte_size,
            brightness_mean=image.brightness_mean,
            brightness_std=image.brightness_std,
        ),
        stored_path=image.stored_path,
        label_version=row.version,
    )


def _snapshot_record(row: Row[Any]) -> SnapshotRecord:
    return SnapshotRecord(
        snapshot_id=row.snapshot_id,
        created_at=row.created_at,
        created_by=row.created_by,
        label_sources=tuple(row.label_sources),
        labels_as_of=row.labels_as_of,
        manifest_sha256=row.manifest_sha256,
        dvc_hash=row.dvc_hash,
        images=row.images,
        lesions=row.lesions,
        melanoma=row.melanoma,
        previous_snapshot_id=row.previous_snapshot_id,
    )


def _snapshot_values(record: SnapshotRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in SnapshotRecord.__dataclass_fields__}
    values["label_sources"] = list(record.label_sources)
    return values


def _audit_event(row: Row[Any]) -> AuditEvent:
    return AuditEvent(
        **{name: getattr(row, name) for name in AuditEvent.__dataclass_fields__},
    )


def _label_event(row: Row[Any]) -> LabelEvent:
    event_row = row
    return LabelEvent(
        event_id=event_row.event_id,
        image_id=event_row.image_id,
        kind=event_row.kind,
        diagnosis=_diagnosis(event_row),
        confirmed_at=event_row.confirmed_at,
        steward=event_row.steward,
        reason=event_row.reason,
        source=event_row.source,
    )


def _quarantined_row(row: Row[Any]) -> QuarantinedRow:
    entry = row
    return QuarantinedRow(
        quarantine_id=entry.quarantine_id,
        source=entry.source,
        row_number=entry.row_number,
        image_id=entry.image_id,
        submitted=dict(entry.submitted),
        reason_kind=entry.reason_kind,
        reason=entry.reason,
        steward=entry.steward,
        quarantined_at=entry.quarantined_at,
    )


def _image_values(image: NewImage, now: datetime) -> dict[str, Any]:
    facts = image.facts
    return {
        "image_id": image.image_id,
        "lesion_id": image.lesion_id,
        "sha256": facts.sha256,
        "stored_path": image.stored_path,
        "width": facts.width,
        "height": facts.height,
        "format": facts.format,
        "mode": facts.mode,
        "byte_size": facts.byte_size,
        "brightness_mean": facts.brightness_mean,
        "brightness_std": facts.brightness_std,
        "registered_by": image.steward,
        "registered_at": now,
    }


def _first_event_values(image: NewImage, now: datetime) -> dict[str, Any]:
    return {
        "image_id": image.image_id,
        "version": 1,
        "kind": image.kind,
        **_diagnosis_values(image.diagnosis),
        "steward": image.steward,
        "confirmed_at": image.confirmed_at,
        "recorded_at": now,
        "reason": None,
        "source": image.source,
    }


def _rejection_values(rejection: Rejection, now: datetime) -> dict[str, Any]:
    return {
        "fingerprint": rejection.fingerprint,
        "source": rejection.source,
        "row_number": rejection.row_number,
        "image_id": rejection.image_id,
        "submitted": rejection.submitted,
        "reason_kind": rejection.reason_kind,
        "reason": rejection.reason,
        "steward": rejection.steward,
        "quarantined_at": now,
    }


def _check_lease(name: str, holder: str, ttl: timedelta, now: datetime) -> None:
    if not 0 < len(name) <= _LEASE_NAME_MAX:
        raise LabelRegistryError(f"a lease name has 1 to {_LEASE_NAME_MAX} characters: {name!r}")
    if not 0 < len(holder) <= _LEASE_HOLDER_MAX:
        raise LabelRegistryError(f"a lease holder has 1 to {_LEASE_HOLDER_MAX} characters")
    if ttl <= timedelta(0):
        raise LabelRegistryError(f"a lease lasts a positive time, not {ttl}")
    if now.tzinfo is None:
        raise LabelRegistryError("naive datetime given to the label registry; use UTC")


def _check_prediction(record: PredictionRecord) -> None:
    """The same bounds on every backend (SQLite would keep an overlong name as it is)."""
    sha256 = record.image_sha256
    if len(sha256) != 64 or not _HEX.issuperset(sha256):
        raise LabelRegistryError(
            f"a prediction's image_sha256 is 64 lowercase hex digits, not {sha256!r:.80}"
        )
    for name, longest in _PREDICTION_TEXT_MAX.items():
        text_value: str | None = getattr(record, name)
        if text_value is not None and not 0 < len(text_value) <= longest:
            raise LabelRegistryError(f"a prediction's {name} has 1 to {longest} characters")
    for name in ("probability", "threshold"):
        number: float = getattr(record, name)
        if not 0 <= number <= 1:  # NaN too
            raise LabelRegistryError(f"a prediction's {name} lies in [0, 1], not {number}")


def _prediction_values(record: PredictionRecord) -> dict[str, Any]:
    return {
        name: getattr(record, name)
        for name in PredictionRecord.__dataclass_fields__
        if name != "prediction_id"
    }


def _prediction_record(row: Row[Any]) -> PredictionRecord:
    return PredictionRecord(
        **{name: getattr(row, name) for name in PredictionRecord.__dataclass_fields__}
    )


def _matched_prediction(row: Row[Any]) -> MatchedPrediction:
    return MatchedPrediction(
        prediction=_prediction_record(row),
        image_id=row.image_id,
        lesion_id=row.lesion_id,
        dx=row.dx,
        dx_type=row.dx_type,
        label_arrived_at=row.label_arrived_at,
        confirmed_at=row.confirmed_at,
    )


def _run_lease(row: Row[Any]) -> RunLease:
    return RunLease(
        name=row.name,
        holder=row.holder,
        acquired_at=row.acquired_at,
        renewed_at=row.renewed_at,
        expires_at=row.expires_at,
    )


def _run_lease_values(lease: RunLease) -> dict[str, Any]:
    return {name: getattr(lease, name) for name in RunLease.__dataclass_fields__}


def _in_utc(lease: RunLease) -> RunLease:
    """As the database gives it back: every moment in UTC."""
    return replace(
        lease,
        acquired_at=lease.acquired_at.astimezone(UTC),
        renewed_at=lease.renewed_at.astimezone(UTC),
        expires_at=lease.expires_at.astimezone(UTC),
    )
