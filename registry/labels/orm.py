"""SQLAlchemy rows of the label registry. Private: the repository turns them into domain values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the label registry; use UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class LesionRow(Base):
    __tablename__ = "lesions"

    lesion_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ImageRow(Base):
    __tablename__ = "images"

    image_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    lesion_id: Mapped[str] = mapped_column(ForeignKey("lesions.lesion_id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    stored_path: Mapped[str] = mapped_column(String(255))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))
    byte_size: Mapped[int] = mapped_column(BigInteger)
    brightness_mean: Mapped[float] = mapped_column(Float)
    brightness_std: Mapped[float] = mapped_column(Float)
    registered_by: Mapped[str] = mapped_column(String(128))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LabelEventRow(Base):
    """Append-only: database triggers refuse UPDATE and DELETE (see the first migration)."""

    __tablename__ = "label_events"
    __table_args__ = (UniqueConstraint("image_id", "version", name="uq_label_events_version"),)

    event_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.image_id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    dx: Mapped[str] = mapped_column(String(16))
    dx_type: Mapped[str] = mapped_column(String(16))
    age: Mapped[float | None] = mapped_column(Float, nullable=True)
    sex: Mapped[str] = mapped_column(String(16))
    localization: Mapped[str] = mapped_column(String(64))
    steward: Mapped[str] = mapped_column(String(128))
    confirmed_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str | None] = mapped_column(Text, nullable=True)


class QuarantineRow(Base):
    __tablename__ = "quarantine"

    quarantine_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(Text)
    row_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_id: Mapped[str | None] = mapped_column(Text, nullable=True)  # as submitted, any length
    submitted: Mapped[dict[str, str]] = mapped_column(JSON)
    reason_kind: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(Text)
    steward: Mapped[str] = mapped_column(String(128))
    quarantined_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SnapshotRow(Base):
    """Append-only (second migration): a frozen manifest and its DVC hash."""

    __tablename__ = "snapshots"

    snapshot_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    created_by: Mapped[str] = mapped_column(String(128))
    label_sources: Mapped[list[str]] = mapped_column(JSON)
    labels_as_of: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    dvc_hash: Mapped[str] = mapped_column(String(64))
    images: Mapped[int] = mapped_column(Integer)
    lesions: Mapped[int] = mapped_column(Integer)
    melanoma: Mapped[int] = mapped_column(Integer)
    previous_snapshot_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class LesionSplitRow(Base):
    """Append-only: the split a lesion was first given, kept for good (the locked test set)."""

    __tablename__ = "lesion_splits"
    __table_args__ = (
        CheckConstraint("split IN ('train', 'val', 'test')", name="ck_lesion_splits_split"),
    )

    lesion_id: Mapped[str] = mapped_column(ForeignKey("lesions.lesion_id"), primary_key=True)
    split: Mapped[str] = mapped_column(String(8))
    snapshot_id: Mapped[str] = mapped_column(ForeignKey("snapshots.snapshot_id"))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditEventRow(Base):
    """Append-only (third migration): one event of the model registry's audit trail."""

    __tablename__ = "audit_events"

    event_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str] = mapped_column(String(256))
    version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    champion_after: Mapped[str | None] = mapped_column(String(32), nullable=True)
    summary: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)


class RunLeaseRow(Base):
    """A named claim (fourth migration): at most one holder until `expires_at`."""

    __tablename__ = "run_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PredictionRow(Base):
    """Append-only (fifth migration): one logged prediction, matched to labels by content."""

    __tablename__ = "predictions"

    prediction_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    image_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model_name: Mapped[str] = mapped_column(String(256))
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    probability: Mapped[float] = mapped_column(Float)
    melanoma: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[float] = mapped_column(Float)
    predicted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    source: Mapped[str] = mapped_column(String(16))


class ScreeningRow(Base):
    """Append-only (sixth migration): one image of a patient scored by one model in a
    pre-screening run; unique per model, image content and patient, so a run that resumes
    or is repeated scores nothing twice."""

    __tablename__ = "screenings"
    __table_args__ = (
        UniqueConstraint("model_uri", "image_sha256", "patient_id", name="uq_screenings_image"),
    )

    screening_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_uri: Mapped[str] = mapped_column(String(512))
    model_name: Mapped[str] = mapped_column(String(256))
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    patient_id: Mapped[str] = mapped_column(String(128), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(String(1024))
    lesion_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    body_site: Mapped[str | None] = mapped_column(String(64), nullable=True)
    probability: Mapped[float] = mapped_column(Float)
    melanoma: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[float] = mapped_column(Float)
    screened_at: Mapped[datetime] = mapped_column(UTCDateTime())
