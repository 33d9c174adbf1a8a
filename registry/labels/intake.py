"""Reading a lab export and checking each row, before anything touches the registry."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipelines.errors import BadInput
from registry.labels.domain import (
    DIAGNOSES,
    LABEL_SOURCES,
    LOCALIZATIONS,
    METADATA_COLUMNS,
    SEXES,
    Diagnosis,
    IntakeRules,
)
from registry.labels.errors import LabelRegistryError, RejectedSubmission

OPTIONAL_COLUMNS: tuple[str, ...] = ("confirmed_at",)
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


class MetadataFileError(LabelRegistryError, BadInput):
    """The metadata file as a whole cannot be read (missing, empty, not a CSV)."""


@dataclass(frozen=True)
class SubmittedRow:
    """A row exactly as the steward submitted it; `row_number` counts the header as row 1."""

    row_number: int
    values: dict[str, str]
    missing_columns: tuple[str, ...] = ()
    extra_fields: int = 0
    short_fields: int = 0

    @property
    def image_id(self) -> str | None:
        return self.values.get("image_id") or None


@dataclass(frozen=True)
class CheckedRow:
    row_number: int
    image_id: str
    lesion_id: str
    diagnosis: Diagnosis
    confirmed_at: datetime | None


@dataclass
class InFileConflicts:
    """Image ids given different labels, and lesions given different diagnoses, in one file.

    Neither row of such a pair can be trusted over the other, so all of them are quarantined.
    """

    images: dict[str, list[int]] = field(default_factory=dict)
    lesions: dict[str, dict[str, list[int]]] = field(default_factory=dict)


def read_metadata(path: Path) -> Iterator[SubmittedRow]:
    """Stream the rows of a HAM10000-layout CSV (BOM and CRLF line ends are fine)."""
    if not path.is_file():
        raise MetadataFileError(f"{path}: no such metadata file")
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        try:
            yield from _rows(path, reader)
        except csv.Error as error:
            raise MetadataFileError(
                f"{path}, line {reader.line_num}: not a readable CSV ({error}); nothing imported"
            ) from None


def _rows(path: Path, reader: Iterator[list[str]]) -> Iterator[SubmittedRow]:
    header_row = next(reader, None)
    if not header_row or not any(cell.strip() for cell in header_row):
        raise MetadataFileError(
            f"{path}: empty file; expected a header {','.join(METADATA_COLUMNS)}"
        )
    header = [cell.strip().lower() for cell in header_row]
    missing = tuple(column for column in METADATA_COLUMNS if column not in header)
    for row_number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        values = {name: printable(cell).strip() for name, cell in zip(header, cells, strict=False)}
        yield SubmittedRow(
            row_number=row_number,
            values=values,
            missing_columns=missing,
            extra_fields=max(0, len(cells) - len(header)),
            short_fields=max(0, len(header) - len(cells)),
        )


def printable(text: str) -> str:
    """Text any database can store: NUL (refused by PostgreSQL) becomes U+FFFD."""
    return text.replace("\x00", "\ufffd")


def check_row(row: SubmittedRow, rules: IntakeRules, now: datetime) -> CheckedRow:
    """Return the row as typed values, or raise RejectedSubmission with the first problem."""
    _check_shape(row)
    values = row.values
    image_id = _checked_id(values.get("image_id", ""), "image_id")
    lesion_id = _checked_id(values.get("lesion_id", ""), "lesion_id")
    diagnosis = Diagnosis(
        dx=_one_of(values.get("dx", ""), DIAGNOSES, "dx", "unknown-dx"),
        dx_type=_one_of(values.get("dx_type", ""), LABEL_SOURCES, "dx_type", "unknown-dx-type"),
        age=_checked_age(values.get("age", ""), rules),
        sex=_one_of(values.get("sex", ""), SEXES, "sex", "invalid-sex"),
        localization=_one_of(
            values.get("localization", ""), LOCALIZATIONS, "localization", "unknown-localization"
        ),
    )
    confirmed_at = _checked_confirmed_at(values.get("confirmed_at", ""), now)
    return CheckedRow(row.row_number, image_id, lesion_id, diagnosis, confirmed_at)


def find_in_file_conflicts(rows: Iterable[SubmittedRow], rules: IntakeRules) -> InFileConflicts:
    """First pass over a file: keeps only ids and labels, never images, so memory stays small."""
    labels_of_image: dict[str, set[tuple[Diagnosis, str]]] = {}
    rows_of_image: dict[str, list[int]] = {}
    rows_by_lesion_dx: dict[str, dict[str, list[int]]] = {}
    epoch = datetime.now(UTC)
    for row in rows:
        try:
            checked = check_row(row, rules, epoch)
        except RejectedSubmission:
            continue
        labels_of_image.setdefault(checked.image_id, set()).add(
            (checked.diagnosis, checked.lesion_id)
        )
        rows_of_image.setdefault(checked.image_id, []).append(row.row_number)
        by_dx = rows_by_lesion_dx.setdefault(checked.lesion_id, {})
        by_dx.setdefault(checked.diagnosis.dx, []).append(row.row_number)
    conflicts = InFileConflicts()
    for image_id, labels in labels_of_image.items():
        if len(labels) > 1:
            conflicts.images[image_id] = rows_of_image[image_id]
    for lesion_id, by_dx in rows_by_lesion_dx.items():
        if len(by_dx) > 1:
            conflicts.lesions[lesion_id] = by_dx
    return conflicts


def conflict_reason(checked: CheckedRow, conflicts: InFileConflicts) -> RejectedSubmission | None:
    if checked.image_id in conflicts.images:
        rows = ", ".join(str(n) for n in conflicts.images[checked.image_id])
        return RejectedSubmission(
            "conflicting-labels",
            f"image_id {checked.image_id} appears at rows {rows} with different labels",
        )
    if checked.lesion_id in conflicts.lesions:
        given = "; ".join(
            f"{dx} at rows {', '.join(str(n) for n in rows)}"
            for dx, rows in sorted(conflicts.lesions[checked.lesion_id].items())
        )
        return RejectedSubmission(
            "lesion-conflict",
            f"lesion {checked.lesion_id} is given two different diagnoses in this file: {given}",
        )
    return None


def find_image_file(images_dir: Path, image_id: str) -> Path:
    for extension in IMAGE_EXTENSIONS:
        candidate = images_dir / f"{image_id}{extension}"
        if candidate.is_file():
            return candidate
    raise RejectedSubmission(
        "missing-image", f"image file {images_dir / (image_id + '.jpg')} does not exist"
    )


def _check_shape(row: SubmittedRow) -> None:
    if row.missing_columns:
        raise RejectedSubmission(
            "missing-columns", f"file lacks column(s): {', '.join(row.missing_columns)}"
        )
    if row.short_fields:
        raise RejectedSubmission(
            "missing-fields", f"row has {row.short_fields} field(s) fewer than the header"
        )
    if row.extra_fields:
        raise RejectedSubmission(
            "extra-fields", f"row has {row.extra_fields} field(s) more than the header"
        )


def _checked_id(value: str, column: str) -> str:
    if not value:
        raise RejectedSubmission(f"invalid-{column.replace('_', '-')}", f"{column} is empty")
    if "/" in value or "\\" in value or ".." in value:
        raise RejectedSubmission(
            f"unsafe-{column.replace('_', '-')}",
            f"{column} {value!r} contains a path separator or '..'",
        )
    if not _SAFE_ID.fullmatch(value):
        raise RejectedSubmission(
            f"invalid-{column.replace('_', '-')}",
            f"{column} {value!r} must be letters, digits, '_', '-' or '.' (at most 128)",
        )
    return value


def _one_of(value: str, allowed: frozenset[str], column: str, reason_kind: str) -> str:
    normalised = value.strip().lower()
    if normalised not in allowed:
        choices = ", ".join(sorted(allowed))
        raise RejectedSubmission(reason_kind, f"{column} {value!r} is not one of: {choices}")
    return normalised


def _checked_age(value: str, rules: IntakeRules) -> float | None:
    if not value:
        return None
    try:
        age = float(value)
    except ValueError:
        raise RejectedSubmission("invalid-age", f"age {value!r} is not a number") from None
    if math.isnan(age) or not rules.age_min <= age <= rules.age_max:
        raise RejectedSubmission(
            "age-out-of-range", f"age {value} is outside {rules.age_min:g}..{rules.age_max:g}"
        )
    return age


def _checked_confirmed_at(value: str, now: datetime) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RejectedSubmission(
            "invalid-confirmed-at", f"confirmed_at {value!r} is not an ISO date or date-time"
        ) from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if moment > now:
        raise RejectedSubmission("invalid-confirmed-at", f"confirmed_at {value} is in the future")
    return moment
