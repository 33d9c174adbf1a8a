"""Label registry: the system of record for labelled dermoscopic images."""

from registry.labels.domain import (
    AUDIT_ACTIONS,
    DIAGNOSES,
    LABEL_SOURCES,
    LOCALIZATIONS,
    METADATA_COLUMNS,
    SEXES,
    AuditEvent,
    Diagnosis,
    ImageFacts,
    ImportSummary,
    IntakeRules,
    LabelEvent,
    LabelledImage,
    QuarantinedRow,
    RegistryStats,
    RunLease,
    SnapshotRecord,
)
from registry.labels.errors import (
    ConcurrentChange,
    LabelRegistryError,
    LesionConflict,
    RegistryUnavailable,
    RejectedSubmission,
    SchemaOutOfDate,
    UnknownImage,
    UnknownSnapshot,
)
from registry.labels.image_store import ImageStore
from registry.labels.intake import MetadataFileError
from registry.labels.leases import LeaseHeld, exclusive
from registry.labels.repository import LabelRepository
from registry.labels.service import LabelRegistry

__all__ = [
    "AUDIT_ACTIONS",
    "DIAGNOSES",
    "LABEL_SOURCES",
    "LOCALIZATIONS",
    "METADATA_COLUMNS",
    "SEXES",
    "AuditEvent",
    "ConcurrentChange",
    "Diagnosis",
    "ImageFacts",
    "ImageStore",
    "ImportSummary",
    "IntakeRules",
    "LabelEvent",
    "LabelRegistry",
    "LabelRegistryError",
    "LabelRepository",
    "LabelledImage",
    "LeaseHeld",
    "LesionConflict",
    "MetadataFileError",
    "QuarantinedRow",
    "RegistryStats",
    "RegistryUnavailable",
    "RejectedSubmission",
    "RunLease",
    "SchemaOutOfDate",
    "SnapshotRecord",
    "UnknownImage",
    "UnknownSnapshot",
    "exclusive",
]
