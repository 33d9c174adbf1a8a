"""What the label registry holds, in the clinic's words. Frozen values cross the boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pipelines.image_rules import ImageRules

DIAGNOSES: frozenset[str] = frozenset({"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"})
"""HAM10000 diagnoses; `mel` is the positive class."""

LABEL_SOURCES: frozenset[str] = frozenset({"histo", "follow_up", "consensus", "confocal"})
"""How a diagnosis was confirmed (HAM10000 `dx_type`); histopathology is `histo`."""

SEXES: frozenset[str] = frozenset({"male", "female", "unknown"})

LOCALIZATIONS: frozenset[str] = frozenset(
    {
        "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
        "lower extremity", "neck", "scalp", "trunk", "unknown", "upper extremity",
    }
)  # fmt: skip

METADATA_COLUMNS: tuple[str, ...] = (
    "lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization",
)  # fmt: skip
"""The HAM10000 metadata layout a lab export must have; `confirmed_at` is optional."""

EventKind = Literal["import", "add", "relabel"]


@dataclass(frozen=True)
class IntakeRules(ImageRules):
    """Bounds a new image and its metadata must meet (params.yaml `intake`): the image rules
    every path that takes an image applies, and the metadata's."""

    age_min: float = 0
    age_max: float = 120


@dataclass(frozen=True)
class Diagnosis:
    """One confirmed label for an image, as a steward submits it."""

    dx: str
    dx_type: str
    age: float | None
    sex: str
    localization: str

    @property
    def is_melanoma(self) -> bool:
        return self.dx == "mel"


@dataclass(frozen=True)
class ImageFacts:
    """Measured once, at registration, from the decoded pixels."""

    sha256: str
    width: int
    height: int
    format: str
    mode: str
    byte_size: int
    brightness_mean: float
    brightness_std: float


@dataclass(frozen=True)
class LabelledImage:
    """An image with its current (latest) label."""

    image_id: str
    lesion_id: str
    diagnosis: Diagnosis
    confirmed_at: datetime
    steward: str
    facts: ImageFacts
    stored_path: str
    label_version: int

    @property
    def dx(self) -> str:
        return self.diagnosis.dx


@dataclass(frozen=True)
class LabelEvent:
    """One entry of an image's append-only label history."""

    event_id: int
    image_id: str
    kind: str
    diagnosis: Diagnosis
    confirmed_at: datetime
    steward: str
    reason: str | None
    source: str | None


@dataclass(frozen=True)
class QuarantinedRow:
    """A submission that was refused, kept with the row as submitted and the reason."""

    quarantine_id: int
    source: str
    row_number: int | None
    image_id: str | None
    submitted: dict[str, str]
    reason_kind: str
    reason: str
    steward: str
    quarantined_at: datetime


@dataclass
class ImportSummary:
    """What one import did; `exit_code` follows the CLI contract (0 clean, 1 quarantined)."""

    source: str
    rows: int = 0
    registered: int = 0
    unchanged: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rejections: list[Any] = field(default_factory=list)
    """The refused rows (repository Rejection values), for the summary a steward reads."""

    def count_reason(self, reason_kind: str) -> None:
        self.reasons[reason_kind] = self.reasons.get(reason_kind, 0) + 1

    @property
    def exit_code(self) -> int:
        return 1 if self.quarantined else 0

    def counts_line(self) -> str:
        return f"{self.rows} rows: {self.outcome_counts()}"

    def outcome_counts(self) -> str:
        return (
            f"{self.registered} registered, {self.unchanged} unchanged, "
            f"{self.quarantined} quarantined"
        )


@dataclass(frozen=True)
class RegistryStats:
    images: int
    lesions: int
    label_events: int
    quarantined: int
    by_dx: dict[str, int]
    by_dx_type: dict[str, int]
    quarantine_by_reason: dict[str, int]


@dataclass(frozen=True)
class SnapshotRecord:
    """A frozen manifest of confirmed labels, versioned with DVC under `dvc_hash`."""

    snapshot_id: str
    created_at: datetime
    created_by: str
    label_sources: tuple[str, ...]
    labels_as_of: datetime | None
    manifest_sha256: str
    dvc_hash: str
    images: int
    lesions: int
    melanoma: int
    previous_snapshot_id: str | None
