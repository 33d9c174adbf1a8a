"""The label registry's storage, behind a small interface: images and their label events,
the quarantine, and the snapshots with the lesion splits they lock (a snapshot locks each
lesion's split, so it is written under the same lock as the labels). ORM rows never leave
this module; the database itself (engine, transactions, errors) is `registry.database`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, insert, select, text
from sqlalchemy.engine import Connection, Row

from registry.database import ConcurrentChange, Repository, insert_ignoring_duplicates
from registry.labels.domain import (
    Diagnosis,
    ImageFacts,
    LabelEvent,
    LabelledImage,
    QuarantinedRow,
    RegistryStats,
    SnapshotRecord,
)
from registry.labels.orm import (
    ImageRow,
    LabelEventRow,
    LesionRow,
    LesionSplitRow,
    QuarantineRow,
    SnapshotRow,
)

_CHUNK = 500  # ids per IN (...) clause, well under every backend's parameter limit
LABEL_WRITE_LOCK = 0x636D_656C
"""PostgreSQL advisory lock that serialises the label writes ("cmel"): imports, relabels,
snapshots. The audit trail, run leases and the prediction log never take it."""


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


class LabelRepository(Repository):
    """Images, label events, the quarantine, snapshots and the lesion splits they lock."""

    # -- reading -------------------------------------------------------------------------

    def registered_images(self, image_ids: Iterable[str]) -> dict[str, RegisteredImage]:
        found: dict[str, RegisteredImage] = {}
        with self._reading() as connection:
            for chunk in _chunks(sorted(set(image_ids))):
                earlier: dict[str, set[Diagnosis]] = {}
                past = select(LabelEventRow).where(LabelEventRow.image_id.in_(chunk))
                for event_row in connection.execute(past):
                    earlier.setdefault(event_row.image_id, set()).add(_diagnosis(event_row))
                query = current_labels_query().where(ImageRow.image_id.in_(chunk))
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
            query = current_labels_query().where(ImageRow.lesion_id == lesion_id)
            return [_registered_image(row) for row in connection.execute(query)]

    def lesion_diagnoses(self, lesion_ids: Iterable[str]) -> dict[str, str]:
        """The diagnosis of each registered lesion (one per lesion, by the registry's rule)."""
        diagnoses: dict[str, str] = {}
        with self._reading() as connection:
            for chunk in _chunks(sorted(set(lesion_ids))):
                query = current_labels_query().where(ImageRow.lesion_id.in_(chunk))
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
        query = current_labels_query()
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
            current = current_labels_query().subquery()
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

    # -- writing -------------------------------------------------------------------------

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
                    insert_ignoring_duplicates(connection, LesionRow, ["lesion_id"]),
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
                insert_ignoring_duplicates(connection, QuarantineRow, ["fingerprint"]),
                [_rejection_values(rejection, now) for rejection in fresh],
            )
        return len(fresh)

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self.database.reading() as connection:
            yield connection

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction, serialized with every other label write (the advisory lock
        on PostgreSQL, the file's write lock on SQLite). Checks made inside it therefore see
        every change committed before it."""
        with self.database.writing(advisory_lock=LABEL_WRITE_LOCK) as connection:
            yield connection


_LABEL_TABLES = (
    LesionRow.__tablename__,
    ImageRow.__tablename__,
    LabelEventRow.__tablename__,
    LesionSplitRow.__tablename__,
)


def _refuse_lesions_with_two_diagnoses(connection: Connection, lesion_ids: Sequence[str]) -> None:
    """Inside a write transaction: a lesion has one diagnosis, whatever was committed before."""
    for chunk in _chunks(lesion_ids):
        current = current_labels_query().where(ImageRow.lesion_id.in_(chunk)).subquery()
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


def current_labels_query() -> Select[Any]:
    """Every image with its current (latest) label event, one row each."""
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
