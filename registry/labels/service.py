"""The label registry as stewards use it: import, add, relabel, list, quarantine, stats."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

from registry.database import ConcurrentChange, StoreFault, StoreUnavailable
from registry.labels.domain import (
    DIAGNOSES,
    LABEL_SOURCES,
    Diagnosis,
    ImportSummary,
    IntakeRules,
    LabelEvent,
    LabelledImage,
    QuarantinedRow,
    RegistryStats,
    SnapshotRecord,
)
from registry.labels.errors import (
    LesionConflict,
    RejectedSubmission,
    UnknownImage,
    UnknownSnapshot,
)
from registry.labels.image_store import ImageStore, StagedWrites
from registry.labels.images import file_extension, inspect_image
from registry.labels.intake import (
    CheckedRow,
    InFileConflicts,
    SubmittedRow,
    check_row,
    conflict_reason,
    find_image_file,
    find_in_file_conflicts,
    printable,
    read_metadata,
)
from registry.labels.repository import (
    LabelRepository,
    NewImage,
    RegisteredImage,
    Rejection,
    Relabel,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_ATTEMPTS = 3  # a batch that lost a race with another writer is decided again
_BULK_INTAKE = 500  # images registered by one import that call for fresh planner statistics


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Submission:
    """Where rows come from: their images (a folder, or the one file of `add`), who sends
    them, and what the first pass over the file found."""

    images: Path
    conflicts: InFileConflicts
    steward: str
    source: str
    kind: str


@dataclass
class _Batch:
    """Decisions for one transaction of an intake."""

    steward: str
    source: str
    kind: str
    accepted: list[NewImage] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    unchanged: int = 0
    accepted_by_image: dict[str, NewImage] = field(default_factory=dict)
    diagnosis_by_lesion: dict[str, str] = field(default_factory=dict)


class LabelRegistry:
    def __init__(
        self,
        repository: LabelRepository,
        store: ImageStore,
        rules: IntakeRules,
        clock: Clock = utc_now,
    ) -> None:
        self.repository = repository
        self.store = store
        self.rules = rules
        self._clock = clock

    def recover(self) -> int:
        """Settle image files left staged by an import that crashed."""
        return self.store.recover(self.repository.is_stored_path_referenced)

    # -- intake --------------------------------------------------------------------------

    def import_metadata(
        self,
        metadata: Path,
        images_dir: Path,
        *,
        steward: str,
        batch_size: int = 500,
        on_batch: Callable[[ImportSummary], None] | None = None,
    ) -> ImportSummary:
        """Register every valid row of a lab export; quarantine the others with a reason.
        `on_batch` sees the summary so far after each committed batch (progress).

        Idempotent: rows already registered with the same image and label are `unchanged`,
        and a row refused before for the same reason is not quarantined twice.
        """
        steward = _checked_steward(steward)
        source = str(metadata.resolve())  # one file, one source, however its path is spelled
        conflicts = find_in_file_conflicts(read_metadata(metadata), self.rules)
        summary = ImportSummary(source=source)
        rows = read_metadata(metadata)
        while chunk := list(islice(rows, batch_size)):
            self._take_in(
                chunk, _Submission(images_dir, conflicts, steward, source, "import"), summary
            )
            if on_batch is not None:
                on_batch(summary)
        if summary.registered >= _BULK_INTAKE:
            self._refresh_planner_statistics()
        return summary

    def _refresh_planner_statistics(self) -> None:
        """Only a speed-up: the import is written whatever happens here."""
        try:
            self.repository.refresh_planner_statistics()
        except (StoreUnavailable, StoreFault) as error:
            log.warning("planner statistics not refreshed after the import: %s", error)

    def add_image(
        self,
        image: Path,
        *,
        lesion_id: str,
        diagnosis: Diagnosis,
        steward: str,
        image_id: str | None = None,
        confirmed_at: datetime | None = None,
    ) -> ImportSummary:
        """Register one image, by the same rules as an import row."""
        submitted = {
            "lesion_id": lesion_id,
            "image_id": image_id or image.stem,
            "dx": diagnosis.dx,
            "dx_type": diagnosis.dx_type,
            "age": "" if diagnosis.age is None else f"{diagnosis.age:g}",
            "sex": diagnosis.sex,
            "localization": diagnosis.localization,
            "confirmed_at": confirmed_at.isoformat() if confirmed_at else "",
        }
        row = SubmittedRow(
            row_number=0, values={k: printable(v).strip() for k, v in submitted.items()}
        )
        source = str(image.resolve())
        summary = ImportSummary(source=source)
        steward = _checked_steward(steward)
        self._take_in([row], _Submission(image, InFileConflicts(), steward, source, "add"), summary)
        return summary

    def _take_in(
        self, rows: Sequence[SubmittedRow], job: _Submission, summary: ImportSummary
    ) -> None:
        """Decide and write one batch; if a concurrent writer got there first, decide again
        against what it wrote (its rows may now make some of ours conflicts or duplicates)."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                self._take_in_once(rows, job, summary)
                return
            except ConcurrentChange:
                if attempt == _ATTEMPTS:
                    raise

    def _take_in_once(
        self, rows: Sequence[SubmittedRow], job: _Submission, summary: ImportSummary
    ) -> None:
        now = self._clock()
        checked: list[tuple[SubmittedRow, CheckedRow | RejectedSubmission]] = []
        for row in rows:
            try:
                checked_row = check_row(row, self.rules, now)
            except RejectedSubmission as refusal:
                checked.append((row, refusal))
            else:
                checked.append((row, conflict_reason(checked_row, job.conflicts) or checked_row))
        valid = [item for _, item in checked if isinstance(item, CheckedRow)]
        registered = self.repository.registered_images(item.image_id for item in valid)
        lesion_dx = self.repository.lesion_diagnoses(item.lesion_id for item in valid)
        batch = _Batch(steward=job.steward, source=job.source, kind=job.kind)
        with self.store.staging() as staged:
            for row, item in checked:
                if isinstance(item, RejectedSubmission):
                    batch.rejected.append(self._rejection(row, item, batch))
                    continue
                try:
                    self._decide(item, job.images, registered, lesion_dx, batch, staged, now)
                except RejectedSubmission as refusal:
                    batch.rejected.append(self._rejection(row, refusal, batch))
            self._refuse_duplicate_content(batch, {r.image_id: r for r, _ in checked if r.image_id})
            staged.committing()
            try:
                self.repository.record_intake(batch.accepted, batch.rejected, now)
            except ConcurrentChange:
                staged.rolled_back()
                raise
        summary.rows += len(rows)
        summary.registered += len(batch.accepted)
        summary.unchanged += batch.unchanged
        summary.quarantined += len(batch.rejected)
        for rejection in batch.rejected:
            summary.count_reason(rejection.reason_kind)
        summary.rejections.extend(batch.rejected)

    def _decide(
        self,
        row: CheckedRow,
        images: Path,
        registered: dict[str, RegisteredImage],
        lesion_dx: dict[str, str],
        batch: _Batch,
        staged: StagedWrites,
        now: datetime,
    ) -> None:
        image_file = images if images.is_file() else find_image_file(images, row.image_id)
        earlier = registered.get(row.image_id) or _as_registered(
            batch.accepted_by_image.get(row.image_id)
        )
        if earlier is not None:
            _check_same_as_registered(row, earlier, _read(image_file, self.rules))
            batch.unchanged += 1
            return
        known_dx = lesion_dx.get(row.lesion_id) or batch.diagnosis_by_lesion.get(row.lesion_id)
        if known_dx is not None and known_dx != row.diagnosis.dx:
            raise RejectedSubmission(
                "lesion-conflict",
                f"lesion {row.lesion_id} is registered as {known_dx}; this row says "
                f"{row.diagnosis.dx} (use `cme labels relabel --whole-lesion` to correct it)",
            )
        content = _read(image_file, self.rules)
        facts = inspect_image(content, self.rules)
        stored_path = ImageStore.relative_path(facts.sha256, file_extension(facts.format))
        staged.put(stored_path, content)
        accepted = NewImage(
            image_id=row.image_id,
            lesion_id=row.lesion_id,
            facts=facts,
            stored_path=stored_path,
            diagnosis=row.diagnosis,
            confirmed_at=row.confirmed_at or now,
            steward=batch.steward,
            kind=batch.kind,
            source=_source_note(batch.source, row.row_number),
        )
        batch.accepted.append(accepted)
        batch.accepted_by_image[row.image_id] = accepted
        batch.diagnosis_by_lesion[row.lesion_id] = row.diagnosis.dx

    def _refuse_duplicate_content(self, batch: _Batch, rows: dict[str, SubmittedRow]) -> None:
        """An image byte-identical to one registered (or accepted earlier in this batch)
        under another id is quarantined: the same picture twice would count twice in
        training and in the locked test set. (HAM10000 itself holds two such pairs.)"""
        known = self.repository.images_by_content(i.facts.sha256 for i in batch.accepted)
        kept: list[NewImage] = []
        for image in batch.accepted:
            first = known.setdefault(image.facts.sha256, image.image_id)
            if first == image.image_id:
                kept.append(image)
                continue
            refusal = RejectedSubmission(
                "duplicate-image",
                f"the same image (sha256 {image.facts.sha256[:12]}...) is already registered as "
                f"{first}; a picture is registered once",
            )
            batch.rejected.append(self._rejection(rows[image.image_id], refusal, batch))
            del batch.accepted_by_image[image.image_id]
        batch.accepted = kept

    def _rejection(
        self, row: SubmittedRow, refusal: RejectedSubmission, batch: _Batch
    ) -> Rejection:
        return Rejection(
            source=batch.source,
            row_number=row.row_number or None,
            image_id=row.image_id,
            submitted=row.values,
            reason_kind=refusal.reason_kind,
            reason=str(refusal),
            steward=batch.steward,
        )

    # -- corrections ---------------------------------------------------------------------

    def relabel(
        self,
        image_id: str,
        *,
        dx: str,
        dx_type: str,
        reason: str,
        steward: str,
        whole_lesion: bool = False,
    ) -> list[LabelEvent]:
        """Append a new label event (never an overwrite). A lesion keeps one diagnosis, so
        relabelling one of several images of a lesion needs `whole_lesion`."""
        dx, dx_type = (
            _vocabulary(dx, DIAGNOSES, "dx"),
            _vocabulary(dx_type, LABEL_SOURCES, "dx_type"),
        )
        steward = _checked_steward(steward)
        if not reason.strip():
            raise RejectedSubmission("missing-reason", "a relabel needs a reason")
        image = self.repository.registered_images([image_id]).get(image_id)
        if image is None:
            raise UnknownImage(f"no registered image has image_id {image_id}")
        siblings = self.repository.images_of_lesion(image.lesion_id)
        disagreeing = [s for s in siblings if s.image_id != image_id and s.diagnosis.dx != dx]
        if disagreeing and not whole_lesion:
            raise LesionConflict(
                f"lesion {image.lesion_id} has {len(disagreeing)} other image(s) labelled "
                f"{disagreeing[0].diagnosis.dx}; a lesion has one diagnosis, so pass "
                f"--whole-lesion to relabel all {len(siblings)} images of it"
            )
        now = self._clock()
        targets = siblings if whole_lesion else [image]
        relabels = [
            Relabel(
                image_id=target.image_id,
                version=target.version + 1,
                diagnosis=replace(target.diagnosis, dx=dx, dx_type=dx_type),
                steward=steward,
                reason=reason.strip(),
                confirmed_at=now,
            )
            for target in targets
            if (target.diagnosis.dx, target.diagnosis.dx_type) != (dx, dx_type)
        ]
        if relabels:
            self.repository.append_relabels(relabels, now)
        return [event for r in relabels for event in self.repository.history(r.image_id)[-1:]]

    # -- reading -------------------------------------------------------------------------

    def labels(
        self, *, since: datetime | None = None, sources: Sequence[str] | None = None
    ) -> Iterator[LabelledImage]:
        return self.repository.current_labels(since=since, sources=sources)

    def history(self, image_id: str) -> list[LabelEvent]:
        return self.repository.history(image_id)

    def quarantine(self) -> list[QuarantinedRow]:
        return self.repository.quarantined()

    def stats(self) -> RegistryStats:
        return self.repository.stats()

    # -- snapshots -----------------------------------------------------------------------

    def locked_splits(self) -> dict[str, str]:
        return self.repository.locked_splits()

    def snapshots(self) -> list[SnapshotRecord]:
        return self.repository.snapshots()

    def snapshot(self, snapshot_id: str) -> SnapshotRecord:
        record = self.repository.snapshot(snapshot_id)
        if record is None:
            raise UnknownSnapshot(f"no snapshot {snapshot_id!r}; `cme snapshot list` shows them")
        return record

    def record_snapshot(self, record: SnapshotRecord, splits: Mapping[str, str]) -> None:
        self.repository.record_snapshot(record, splits)


def _read(path: Path, rules: IntakeRules) -> bytes:
    """The file's bytes; its size is checked first, so a huge file is never read in."""
    try:
        size = path.stat().st_size
        if size > rules.max_file_bytes:
            raise RejectedSubmission(
                "too-large", f"file of {size:,} bytes exceeds {rules.max_file_bytes:,} bytes"
            )
        return path.read_bytes()
    except OSError as error:
        raise RejectedSubmission("unreadable-image", f"cannot read {path}: {error}") from None


def _checked_steward(steward: str) -> str:
    cleaned = printable(steward).strip()
    if not cleaned or len(cleaned) > 128:
        raise RejectedSubmission(
            "invalid-steward", f"steward name must be 1 to 128 characters, got {steward!r:.60}"
        )
    return cleaned


def _check_same_as_registered(row: CheckedRow, earlier: RegisteredImage, content: bytes) -> None:
    if hashlib.sha256(content).hexdigest() != earlier.sha256:
        raise RejectedSubmission(
            "image-changed",
            f"image_id {row.image_id} is registered with different image bytes "
            f"(sha256 {earlier.sha256[:12]}...)",
        )
    if row.lesion_id != earlier.lesion_id:
        raise RejectedSubmission(
            "lesion-changed",
            f"image_id {row.image_id} is registered under lesion {earlier.lesion_id}",
        )
    if row.diagnosis != earlier.diagnosis and row.diagnosis not in earlier.earlier_diagnoses:
        was = earlier.diagnosis
        raise RejectedSubmission(
            "already-labelled",
            f"image_id {row.image_id} is registered as {was.dx}/{was.dx_type} with other "
            "metadata; use `cme labels relabel` to correct a label",
        )


def _as_registered(image: NewImage | None) -> RegisteredImage | None:
    if image is None:
        return None
    return RegisteredImage(
        image.image_id, image.lesion_id, image.facts.sha256, image.diagnosis, version=1
    )  # no earlier labels: registered by this very batch


def _vocabulary(value: str, allowed: Iterable[str], column: str) -> str:
    normalised = value.strip().lower()
    if normalised not in allowed:
        raise RejectedSubmission(
            f"unknown-{column.replace('_', '-')}",
            f"{column} {value!r} is not one of: {', '.join(sorted(allowed))}",
        )
    return normalised


def _source_note(source: str, row_number: int) -> str:
    return f"{source}:{row_number}" if row_number else source
