"""Dataset stages: export the current labels as a manifest, validate it, freeze it as a
snapshot versioned with DVC, restore one. Each is a typed function that the CLI, dvc.yaml
and the Prefect flows call."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pipelines.dataset.manifest import (
    ManifestEntry,
    build_manifest,
    lesion_splits,
    manifest_digest,
    read_manifest,
    write_atomically,
    write_manifest,
)
from pipelines.dataset.versioning import DataVersioning, FileProgress
from pipelines.errors import BadInput, Fault
from pipelines.validation import (
    DriftReport,
    PreviousSnapshot,
    ValidationReport,
    drift_report,
    validate_manifest,
)
from registry.labels import (
    DIAGNOSES,
    LABEL_SOURCES,
    LOCALIZATIONS,
    SEXES,
    LabelledImage,
    SnapshotRecord,
)
from usecases.params import Params
from usecases.platform import Platform

log = logging.getLogger(__name__)

VOCABULARY = {
    "dx": DIAGNOSES,
    "dx_type": LABEL_SOURCES,
    "sex": SEXES,
    "localization": LOCALIZATIONS,
}
MANIFEST_FILE = "manifest.csv"
DRIFT_FILE = "drift.json"
SNAPSHOT_CACHE = "snapshot-cache"
VERIFIED_MARK = ".cme-verified"
CACHED_SNAPSHOTS = 2  # restored data folders a worker keeps (the week's and the one before)


class SnapshotError(BadInput):
    """A snapshot cannot be taken or found as asked; the message says why."""


@dataclass(frozen=True)
class SnapshotOutcome:
    record: SnapshotRecord
    created: bool
    drift: DriftReport
    folder: Path


def current_manifest(platform: Platform, params: Params) -> pd.DataFrame:
    """The manifest a snapshot taken now would freeze: the current labels from the sources
    in params, each lesion in its locked split or the stable hash's."""
    registry = platform.label_registry()
    labels = registry.labels(sources=params.snapshot.label_sources)
    entries = (_manifest_entry(platform, label) for label in labels)
    return build_manifest(entries, registry.locked_splits(), params.split.fractions())


def _manifest_entry(platform: Platform, label: LabelledImage) -> ManifestEntry:
    image_file = platform.workspace.image_store_dir / label.stored_path
    return ManifestEntry(
        image_id=label.image_id,
        lesion_id=label.lesion_id,
        sha256=label.facts.sha256,
        path=os.path.relpath(image_file, platform.workspace.data_dir),
        dx=label.diagnosis.dx,
        dx_type=label.diagnosis.dx_type,
        age=label.diagnosis.age,
        sex=label.diagnosis.sex,
        localization=label.diagnosis.localization,
        confirmed_at=label.confirmed_at,
        width=label.facts.width,
        height=label.facts.height,
        mode=label.facts.mode,
        image_format=label.facts.format,
        brightness_mean=label.facts.brightness_mean,
        brightness_std=label.facts.brightness_std,
    )


def export_manifest(platform: Platform, params: Params, out: Path) -> pd.DataFrame:
    manifest = current_manifest(platform, params)
    write_manifest(manifest, out)
    return manifest


def latest_snapshot(platform: Platform) -> PreviousSnapshot | None:
    return _with_manifest(platform, platform.label_registry().snapshots())


def _with_manifest(platform: Platform, records: list[SnapshotRecord]) -> PreviousSnapshot | None:
    """The last of `records` with its manifest read from the data folder."""
    if not records:
        return None
    snapshot_id = records[-1].snapshot_id
    return PreviousSnapshot(snapshot_id, snapshot_manifest(platform, snapshot_id))


def snapshot_manifest(platform: Platform, snapshot_id: str) -> pd.DataFrame:
    record = platform.label_registry().snapshot(snapshot_id)
    path = platform.workspace.snapshots_dir / record.snapshot_id / MANIFEST_FILE
    if not path.is_file():
        raise SnapshotError(
            f"snapshot {snapshot_id} is recorded but {path} is missing from this data folder; "
            f"restore it with `cme snapshot restore {record.dvc_hash} --to DIR`"
        )
    return read_manifest(path)


class SnapshotCorrupt(Fault):
    """Images restored from the DVC remote differ from what the snapshot's manifest says."""


@dataclass(frozen=True)
class SnapshotOnHand:
    """A snapshot's manifest and the data folder its image paths are relative to."""

    record: SnapshotRecord
    manifest: pd.DataFrame
    data_dir: Path
    restored: bool
    """Materialised from the DVC remote into this machine's snapshot cache."""

    @property
    def folder(self) -> Path:
        return snapshot_folder(self.data_dir, self.record.snapshot_id)


def snapshot_folder(data_dir: Path, snapshot_id: str) -> Path:
    """Where a data folder keeps a snapshot's manifest and reports (data/snapshots/<id>)."""
    return data_dir / "snapshots" / snapshot_id


def snapshot_on_hand(platform: Platform, snapshot_id: str) -> SnapshotOnHand:
    """The snapshot's images where this machine can read them: its own data folder when that
    holds the manifest and every image (the machine that took it), else the data folder of
    the snapshot's DVC hash, restored once from the DVC remote into $CME_HOME/snapshot-cache
    and checked against the manifest's sha256s (a worker on another machine)."""
    record = platform.label_registry().snapshot(snapshot_id)
    local = platform.workspace.snapshots_dir / snapshot_id / MANIFEST_FILE
    if local.is_file():
        manifest = read_manifest(local)
        data_dir = platform.workspace.data_dir
        if all((data_dir / str(path)).is_file() for path in manifest["path"]):
            return SnapshotOnHand(record, manifest, data_dir, restored=False)
    if not record.dvc_hash:
        raise SnapshotError(f"snapshot {snapshot_id} has no DVC hash to restore it from")
    data_dir = _restored_once(platform, record)
    manifest = read_manifest(snapshot_folder(data_dir, snapshot_id) / MANIFEST_FILE)
    return SnapshotOnHand(record, manifest, data_dir, restored=True)


def _restored_once(platform: Platform, record: SnapshotRecord) -> Path:
    """The snapshot's data folder in the cache, restored and verified by the first caller;
    later callers (and other processes, kept apart by a lock) reuse it."""
    cache = platform.workspace.home / SNAPSHOT_CACHE
    target = cache / record.dvc_hash.removesuffix(".dir")
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f"{target.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / VERIFIED_MARK).is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)  # a restore interrupted before its check
        log.warning("restoring snapshot %s (%s) from the DVC remote", record.snapshot_id,
                    record.dvc_hash)  # fmt: skip
        DataVersioning(cache, cache / "unused", platform.workspace.dvc_remote_url,
                       remote_endpoint=platform.workspace.dvc_remote_endpoint,
                       ).restore(record.dvc_hash, target)  # fmt: skip
        try:
            _check_restored(record, target)
        except SnapshotCorrupt:
            shutil.rmtree(target, ignore_errors=True)
            raise
        write_atomically(target / VERIFIED_MARK, record.manifest_sha256.encode())
    _forget_older_restores(cache)
    return target


def _forget_older_restores(cache: Path) -> None:
    """Only the CACHED_SNAPSHOTS most recently restored data folders stay (each is a whole
    copy); DVC's own cache beside them keeps every image once, so an older one comes back
    from there without the remote."""
    marks = sorted(cache.glob(f"*/{VERIFIED_MARK}"), key=lambda mark: mark.stat().st_mtime)
    for mark in marks[:-CACHED_SNAPSHOTS]:
        shutil.rmtree(mark.parent, ignore_errors=True)


def _check_restored(record: SnapshotRecord, data_dir: Path) -> None:
    manifest_file = snapshot_folder(data_dir, record.snapshot_id) / MANIFEST_FILE
    if not manifest_file.is_file():
        raise SnapshotCorrupt(f"DVC version {record.dvc_hash} holds no {manifest_file.name} "
                              f"for snapshot {record.snapshot_id}")  # fmt: skip
    if hashlib.sha256(manifest_file.read_bytes()).hexdigest() != record.manifest_sha256:
        raise SnapshotCorrupt(f"{manifest_file}: not the manifest recorded for snapshot "
                              f"{record.snapshot_id}")  # fmt: skip
    manifest = read_manifest(manifest_file)
    rows = zip(manifest["path"], manifest["sha256"], strict=True)
    for row, (path, expected) in enumerate(rows, start=2):
        image = data_dir / str(path)
        found = hashlib.sha256(image.read_bytes()).hexdigest() if image.is_file() else "missing"
        if found != expected:
            raise SnapshotCorrupt(
                f"{manifest_file}, row {row}: {path} restored from {record.dvc_hash} has "
                f"sha256 {found}, the manifest says {expected}"
            )


def snapshot_drift_warnings(snapshot_folder: Path) -> list[str]:
    """The drift warnings recorded when the snapshot was taken, one line each."""
    path = snapshot_folder / DRIFT_FILE
    if not path.is_file():
        return []
    checks = json.loads(path.read_text()).get("checks", [])
    return [
        f"{check['feature']} {check['measure']} {check['value']:.3f} > {check['threshold']:g}"
        for check in checks
        if check.get("warned")
    ]


def validate(
    platform: Platform,
    params: Params,
    manifest: pd.DataFrame,
    subject: str,
    report_file: Path | None = None,
) -> ValidationReport:
    """Run both suites and the drift report; keep the JSON report and the Data Docs HTML
    under $CME_HOME/reports (and at `report_file` when given)."""
    reports = platform.workspace.reports_dir
    report = validate_manifest(
        manifest,
        subject=subject,
        bounds=params.validation.bounds(),
        vocabulary=VOCABULARY,
        locked_splits=platform.label_registry().locked_splits(),
        data_dir=platform.workspace.data_dir,
        docs_dir=reports / "data-docs",
        previous=latest_snapshot(platform),
        drift_thresholds=params.drift.thresholds(),
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    for path in (reports / f"validation-{stamp}.json", report_file):
        if path is not None:
            write_atomically(path, report.to_json().encode())
    for warning in report.drift.warnings:
        log.warning(
            "drift in %s: %s %.3f > %g",
            warning.feature,
            warning.measure,
            warning.value,
            warning.threshold,
        )
    return report


SNAPSHOT_STEPS = 4
"""Reading the labels, writing the folder, versioning with DVC, recording: `on_step`'s total."""
VERSIONING_STEP = 2  # the step `on_files` hears from


def take_snapshot(
    platform: Platform,
    params: Params,
    *,
    steward: str,
    manifest: pd.DataFrame | None = None,
    on_step: Callable[[int, str], None] | None = None,
    on_files: FileProgress | None = None,
) -> SnapshotOutcome:
    """Freeze `manifest` (default: the current labels) under data/snapshots/<id>/, version
    the data folder with DVC, and record the snapshot with its hash and locked splits. An
    unchanged manifest returns the latest snapshot instead of a copy of it. `on_step` hears
    of each of the SNAPSHOT_STEPS as it begins (its number from 0, and what it does);
    `on_files`, of DVC's progress through the files while it versions them."""
    step = on_step or (lambda done, doing: None)
    registry = platform.label_registry()
    with _snapshot_lock(platform):
        step(0, "reading the labels")
        records = registry.snapshots()
        _remove_unrecorded_snapshot_folders(platform, {record.snapshot_id for record in records})
        frozen = manifest if manifest is not None else current_manifest(platform, params)
        digest = manifest_digest(frozen)
        previous = _with_manifest(platform, records)
        drift = drift_report(previous, frozen, params.drift.thresholds())
        if records and records[-1].manifest_sha256 == digest:
            latest = records[-1]
            return SnapshotOutcome(
                latest, False, drift, platform.workspace.snapshots_dir / latest.snapshot_id
            )
        record = _new_record(frozen, digest, params, steward, previous)
        step(1, f"writing the snapshot folder ({len(frozen):,} images)")
        folder = _write_snapshot_folder(platform, record, frozen, drift)
        files = sum(len(names) for _, _, names in os.walk(platform.workspace.data_dir))
        doing = f"versioning data/ with DVC ({files:,} files: hashing, caching, pushing)"
        step(VERSIONING_STEP, doing)
        record = replace(record, dvc_hash=_versioning(platform).commit(on_files))
        step(3, "recording the snapshot and its lesion splits")
        registry.record_snapshot(record, lesion_splits(frozen))
        step(SNAPSHOT_STEPS, f"snapshot {record.snapshot_id}")
    return SnapshotOutcome(record, True, drift, folder)


def _new_record(
    manifest: pd.DataFrame,
    digest: str,
    params: Params,
    steward: str,
    previous: PreviousSnapshot | None,
) -> SnapshotRecord:
    created_at = datetime.now(UTC).replace(microsecond=0)
    confirmed = pd.to_datetime(manifest["confirmed_at"], utc=True)
    return SnapshotRecord(
        snapshot_id=f"{created_at:%Y%m%dT%H%M%SZ}-{digest[:8]}",
        created_at=created_at,
        created_by=steward,
        label_sources=tuple(params.snapshot.label_sources),
        labels_as_of=confirmed.max().to_pydatetime() if len(manifest) else None,
        manifest_sha256=digest,
        dvc_hash="",
        images=len(manifest),
        lesions=int(manifest["lesion_id"].nunique()),
        melanoma=int(manifest["label"].sum()),
        previous_snapshot_id=previous.snapshot_id if previous else None,
    )


def _write_snapshot_folder(
    platform: Platform, record: SnapshotRecord, manifest: pd.DataFrame, drift: DriftReport
) -> Path:
    """Write the folder beside its final place and rename it in, so that a crash leaves
    either nothing or a whole folder (which the next snapshot removes if unrecorded)."""
    final = platform.workspace.snapshots_dir / record.snapshot_id
    partial = final.with_name(f".{record.snapshot_id}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_manifest(manifest, partial / MANIFEST_FILE)
    description = {k: v for k, v in asdict(record).items() if k != "dvc_hash"}
    for name, document in (("snapshot.json", description), (DRIFT_FILE, asdict(drift))):
        write_atomically(partial / name, json.dumps(document, indent=2, default=str).encode())
    partial.rename(final)
    return final


def _remove_unrecorded_snapshot_folders(platform: Platform, recorded: set[str]) -> None:
    folder = platform.workspace.snapshots_dir
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name not in recorded:
            log.warning("removing %s: a snapshot interrupted before it was recorded", entry)
            shutil.rmtree(entry)


def restore_snapshot(platform: Platform, reference: str, target: Path) -> str:
    """Restore the data folder of a snapshot (by id) or of any DVC hash at `target`."""
    records = {r.snapshot_id: r for r in platform.label_registry().snapshots()}
    dvc_hash = records[reference].dvc_hash if reference in records else reference
    _versioning(platform).restore(dvc_hash, target)
    return dvc_hash


def _versioning(platform: Platform) -> DataVersioning:
    settings = platform.workspace
    return DataVersioning(
        settings.project_dir,
        settings.data_dir,
        settings.dvc_remote_url,
        remote_endpoint=settings.dvc_remote_endpoint,
    )


@contextmanager
def _snapshot_lock(platform: Platform) -> Iterator[None]:
    platform.workspace.home.mkdir(parents=True, exist_ok=True)
    with (platform.workspace.home / "snapshot.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
