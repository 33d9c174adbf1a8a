"""The label inbox: lab exports a steward drops into a folder are imported and filed away.

Each export is a sub-folder `inbox/<name>/` holding one HAM10000-layout CSV and its images
(in `images/`, or beside the CSV). Once nothing in it changed for `inbox.settle_seconds`,
it is imported into the label registry and moved, with a `summary.json`, to
`processed/<UTC stamp>-<name>/` when every row went in, or to `failed/<UTC stamp>-<name>/`
with a `quarantine.csv` when a row was refused or the export could not be read at all.
A moved export is never scanned again; dropping it again re-imports it (all `unchanged`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pipelines.dataset.manifest import write_atomically
from pipelines.errors import BadInput
from registry.labels import ImportSummary, MetadataFileError
from usecases.params import Params
from usecases.platform import Platform

InboxStatus = Literal["processed", "failed", "waiting"]
PROCESSED_DIR = "processed"
FAILED_DIR = "failed"
PREFERRED_METADATA = "metadata.csv"
SUMMARY_FILE = "summary.json"
QUARANTINE_FILE = "quarantine.csv"
QUARANTINE_REPORT_COLUMNS = ("row_number", "image_id", "reason_kind", "reason")
SHOWN_REJECTIONS = 10


class ExportProblem(BadInput):
    """An export cannot be imported as a whole; `reason_kind` is its short code."""

    def __init__(self, reason_kind: str, message: str) -> None:
        super().__init__(message)
        self.reason_kind = reason_kind


@dataclass(frozen=True)
class InboxResult:
    """What became of one export folder in this run."""

    name: str
    status: InboxStatus
    moved_to: Path | None
    summary: ImportSummary | None
    reason: str

    def line(self) -> str:
        where = f" -> {self.moved_to}" if self.moved_to is not None else ""
        return f"{self.status:<9} {self.name}{where}: {self.reason}"


@dataclass(frozen=True)
class InboxReport:
    """Every export the run looked at, in name order."""

    inbox: Path
    results: tuple[InboxResult, ...]

    def with_status(self, status: InboxStatus) -> tuple[InboxResult, ...]:
        return tuple(result for result in self.results if result.status == status)

    def summary_lines(self) -> list[str]:
        counts = ", ".join(
            f"{len(self.with_status(status))} {status}"
            for status in ("processed", "failed", "waiting")
        )
        lines = [f"inbox {self.inbox}: {counts}"]
        for result in self.results:
            lines.append(result.line())
            if result.summary is not None and result.summary.quarantined:
                lines.extend(f"  {line}" for line in rejection_lines(result.summary))
        return lines


def process_inbox(
    platform: Platform, params: Params, *, steward: str, now: datetime | None = None
) -> InboxReport:
    """Import every settled export in the inbox and file it under processed/ or failed/.

    Errors that a retry may cure (`pipelines.errors.Retryable`: the database unreachable,
    a concurrent change) propagate and leave the export where it is."""
    now = now or datetime.now(UTC)
    inbox = platform.workspace.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    results = tuple(
        process_export(platform, params, export, steward=steward, now=now)
        for export in export_folders(inbox)
    )
    return InboxReport(inbox=inbox, results=results)


def export_folders(inbox: Path) -> list[Path]:
    """The export folders in the inbox: not hidden, not processed/ or failed/."""
    return sorted(
        folder
        for folder in inbox.iterdir()
        if folder.is_dir()
        and not folder.name.startswith(".")
        and folder.name not in (PROCESSED_DIR, FAILED_DIR)
    )


def process_export(
    platform: Platform, params: Params, export: Path, *, steward: str, now: datetime
) -> InboxResult:
    """Leave an export still being copied alone; import and file a settled one."""
    quiet_for = now.timestamp() - last_change(export)
    settle_seconds = params.inbox.settle_seconds
    if settle_seconds > 0 and quiet_for < settle_seconds:
        reason = (
            f"changed {max(quiet_for, 0):.0f}s ago; imported once nothing in it "
            f"changed for {settle_seconds:g}s"
        )
        return InboxResult(export.name, "waiting", None, None, reason)
    try:
        summary = import_export(platform, params, export, steward=steward)
    except ExportProblem as problem:
        return file_unreadable_export(export, problem, steward=steward, now=now)
    return file_imported_export(export, summary, steward=steward, now=now)


def last_change(export: Path) -> float:
    """When the folder or anything in it last changed (epoch seconds). The inode change
    time counts too: a copy that keeps the original modification times (`cp -p`,
    `rsync -a`) still shows when it arrived."""
    try:
        stats = [path.lstat() for path in (export, *export.rglob("*"))]
    except FileNotFoundError:  # something vanished while we looked: it is still changing
        return datetime.now(UTC).timestamp()
    return max(max(stat.st_mtime, stat.st_ctime) for stat in stats)


def import_export(
    platform: Platform, params: Params, export: Path, *, steward: str
) -> ImportSummary:
    """Import the export's CSV with the label registry's own rules."""
    metadata = metadata_file(export)
    images = export / "images"
    registry = platform.label_registry(params.intake.rules())
    try:
        return registry.import_metadata(
            metadata,
            images if images.is_dir() else export,
            steward=steward,
            batch_size=params.intake.batch_size,
        )
    except MetadataFileError as error:
        raise ExportProblem("unreadable-metadata", str(error)) from None


def metadata_file(export: Path) -> Path:
    """`metadata.csv`, or else the one CSV in the export folder (reports left by an
    interrupted run are not candidates)."""
    preferred = export / PREFERRED_METADATA
    if preferred.is_file():
        return preferred
    candidates = sorted(
        path
        for path in export.iterdir()
        if path.suffix.lower() == ".csv" and path.is_file() and path.name != QUARANTINE_FILE
    )
    if not candidates:
        raise ExportProblem(
            "no-metadata-file", f"{export}: no metadata CSV (expected {PREFERRED_METADATA})"
        )
    if len(candidates) > 1:
        names = ", ".join(path.name for path in candidates)
        raise ExportProblem(
            "several-metadata-files",
            f"{export}: several CSV files ({names}); name the one to import {PREFERRED_METADATA}",
        )
    return candidates[0]


def file_imported_export(
    export: Path, summary: ImportSummary, *, steward: str, now: datetime
) -> InboxResult:
    """processed/ when every row went in; failed/ with the refused rows otherwise."""
    report = export_record(export.name, steward, now) | {"import": summary_counts(summary)}
    counts = summary.counts_line()
    if not summary.quarantined:
        write_json(export / SUMMARY_FILE, report | {"status": "processed"})
        moved_to = move_export(export, PROCESSED_DIR, now)
        return InboxResult(export.name, "processed", moved_to, summary, counts)
    write_json(export / SUMMARY_FILE, report | {"status": "failed"})
    write_quarantine_report(export / QUARANTINE_FILE, quarantine_rows(summary))
    moved_to = move_export(export, FAILED_DIR, now)
    reasons = ", ".join(f"{kind} {n}" for kind, n in sorted(summary.reasons.items()))
    return InboxResult(export.name, "failed", moved_to, summary, f"{counts} ({reasons})")


def file_unreadable_export(
    export: Path, problem: ExportProblem, *, steward: str, now: datetime
) -> InboxResult:
    """failed/, with the reason; nothing of it was imported."""
    report = export_record(export.name, steward, now) | {
        "status": "failed",
        "reason_kind": problem.reason_kind,
        "reason": str(problem),
    }
    write_json(export / SUMMARY_FILE, report)
    whole_export = {"row_number": "", "image_id": "", "reason_kind": problem.reason_kind}
    write_quarantine_report(export / QUARANTINE_FILE, [whole_export | {"reason": str(problem)}])
    moved_to = move_export(export, FAILED_DIR, now)
    return InboxResult(export.name, "failed", moved_to, None, f"nothing imported: {problem}")


def export_record(name: str, steward: str, now: datetime) -> dict[str, Any]:
    return {"export": name, "steward": steward, "filed_at": now.astimezone(UTC).isoformat()}


def summary_counts(summary: ImportSummary) -> dict[str, Any]:
    return {
        "source": summary.source,
        "rows": summary.rows,
        "registered": summary.registered,
        "unchanged": summary.unchanged,
        "quarantined": summary.quarantined,
        "reasons": dict(sorted(summary.reasons.items())),
    }


def rejection_lines(summary: ImportSummary, shown: int = SHOWN_REJECTIONS) -> list[str]:
    """The first refused rows, each with its row number, image id and reason."""
    lines = [
        f"row {rejection.row_number} (image_id {rejection.image_id or '?'}): {rejection.reason}"
        for rejection in summary.rejections[:shown]
    ]
    if summary.quarantined > shown:
        lines.append(f"... {summary.quarantined - shown} more in {QUARANTINE_FILE}")
    return lines


def quarantine_rows(summary: ImportSummary) -> list[dict[str, Any]]:
    return [
        {
            "row_number": rejection.row_number or "",
            "image_id": rejection.image_id or "",
            "reason_kind": rejection.reason_kind,
            "reason": rejection.reason,
        }
        for rejection in summary.rejections
    ]


def write_quarantine_report(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=QUARANTINE_REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue().encode("utf-8"))


def write_json(path: Path, document: dict[str, Any]) -> None:
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def move_export(export: Path, outcome: str, now: datetime) -> Path:
    """Rename the export into `<outcome>/<UTC stamp>-<name>` (atomic, same filesystem)."""
    shelf = export.parent / outcome
    shelf.mkdir(exist_ok=True)
    target = free_name(shelf, f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{export.name}")
    export.rename(target)  # os.rename: atomic within one filesystem
    return target


def free_name(shelf: Path, name: str) -> Path:
    """`shelf/name`, or `shelf/name-2`, `-3`, ... when the same export was filed this second."""
    target, number = shelf / name, 1
    while target.exists():
        number += 1
        target = shelf / f"{name}-{number}"
    return target
