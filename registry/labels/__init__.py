"""Label registry: the system of record for labelled dermoscopic images."""

from registry.database import ConcurrentChange, SchemaOutOfDate
from registry.labels.domain import (
    DIAGNOSES,
    LABEL_SOURCES,
    LOCALIZATIONS,
    METADATA_COLUMNS,
    SEXES,
    Diagnosis,
    ImageFacts,
    ImportSummary,
    IntakeRules,
    LabelEvent,
    LabelledImage,
    QuarantinedRow,
    RegistryStats,
    SnapshotRecord,
)
from registry.labels.errors import (
    LabelRegistryError,
    LesionConflict,
    RejectedSubmission,
    UnknownImage,
    UnknownSnapshot,
)
from registry.labels.image_store import ImageStore
from registry.labels.intake import MetadataFileError
from registry.labels.repository import LabelRepository
from registry.labels.service import LabelRegistry

__all__ = [
    "DIAGNOSES",
    "LABEL_SOURCES",
    "LOCALIZATIONS",
    "METADATA_COLUMNS",
    "SEXES",
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
    "LesionConflict",
    "MetadataFileError",
    "QuarantinedRow",
    "RegistryStats",
    "RejectedSubmission",
    "SchemaOutOfDate",
    "SnapshotRecord",
    "UnknownImage",
    "UnknownSnapshot",
]
