"""Pre-screening at scale: every image of a patient's total-body photography scored by one
model version, in batches that Dask workers take (the `batch-screening` flow), into a ranked
worklist per patient and the prediction log.

A source is a local folder or manifest, or one in an object store (any fsspec URL, e.g.
`s3://bucket/day/`), read by each worker itself; for a cluster that cannot read the caller's
disk, the batches carry the images' bytes instead (`carried`). Each batch refuses what
registration would refuse (the intake's rules, with the reason), skips
the images this model version has scored for that patient already, and writes its results
with their predictions in one transaction: a killed run resumes where it stopped, and a
repeated one scores nothing twice."""

from __future__ import annotations

import csv
import hashlib
import json
import posixpath
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipelines.errors import BadInput, Refused
from pipelines.screening import WORKLIST_COLUMNS, ranked_worklist, thumbnail, worklist_page
from registry.labels.domain import IntakeRules
from registry.labels.errors import RejectedSubmission
from registry.labels.images import check_header
from registry.labels.service import utc_now
from registry.models import CHAMPION
from registry.screening_log import ScreeningResult
from usecases.platform import Platform

if TYPE_CHECKING:
    from usecases.serving import Prediction, ServedModel

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
MANIFEST_COLUMNS = ("image", "patient_id")
OPTIONAL_COLUMNS = ("lesion_id", "body_site")
FIELD_LIMITS = {"patient_id": 128, "lesion_id": 128, "body_site": 64}  # the screenings table's
DEFAULT_BATCH_SIZE = 256


class ScreeningSourceError(BadInput, ValueError):
    """The source cannot be screened as given; the message names the file, row and reason."""


class NoModelToScreenWith(Refused, LookupError):
    """The model URI names no registered version (no champion yet)."""


# What makes one image unscorable, not its batch: refused with the reason, the rest scored.
_UNREADABLE = (OSError, RejectedSubmission, ScreeningSourceError)


@dataclass(frozen=True)
class ScreeningImage:
    """One image to score: where it is, whose it is, and what the clinic knows of it; for a
    worker that cannot read `location`, its bytes (or why the caller could not read them)."""

    location: str  # a local path, or an fsspec URL (s3://bucket/key.jpg)
    patient_id: str
    lesion_id: str | None = None
    body_site: str | None = None
    content: bytes | None = field(default=None, repr=False, compare=False)
    unreadable: str | None = None


@dataclass(frozen=True)
class ScreeningModel:
    """The one version a run scores with, fixed at its start (the alias may move)."""

    uri: str  # models:/NAME/VERSION
    name: str
    version: str


@dataclass(frozen=True)
class BatchOutcome:
    scored: int = 0
    already_scored: int = 0
    refused: tuple[tuple[str, str], ...] = ()  # (image, reason)


@dataclass(frozen=True)
class ScreeningReport:
    model: ScreeningModel
    images: int
    scored: int
    already_scored: int
    refused: tuple[tuple[str, str], ...]
    patients: tuple[str, ...]
    worklist_csv: Path
    worklist_json: Path
    worklist_html: Path
    worklist: pd.DataFrame = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """What a run did, in plain values (a flow's result)."""
        return {
            "model_uri": self.model.uri, "model_version": self.model.version,
            "images": self.images, "scored": self.scored,
            "already_scored": self.already_scored, "patients": list(self.patients),
            "not_scored": [{"image": name, "reason": why} for name, why in self.refused],
            "worklist_csv": str(self.worklist_csv), "worklist_json": str(self.worklist_json),
            "worklist_html": str(self.worklist_html),
        }  # fmt: skip


def read_source(source: str, patient: str | None) -> list[ScreeningImage]:
    """The images of a folder (all of one patient, `patient`) or of a CSV manifest (columns
    image, patient_id, and optionally lesion_id, body_site; an image path relative to the
    manifest's folder; several patients in one manifest are fine), on the local disk or at
    an object-store URL."""
    store, root = _store(source)
    try:
        is_folder, is_file = store.isdir(root), store.isfile(root)
        if is_folder:
            found = store.find(root)
    except (OSError, ValueError) as error:
        raise ScreeningSourceError(f"{source}: cannot read it ({error})") from None
    if is_folder:
        if not patient:
            raise ScreeningSourceError(f"{source}: a folder of images needs --patient ID")
        _check_lengths("--patient", {"patient_id": patient})
        files = sorted(p for p in found if posixpath.splitext(p)[1].lower() in IMAGE_SUFFIXES)
        if not files:
            raise ScreeningSourceError(f"{source}: no .jpg, .jpeg or .png files in it")
        return [ScreeningImage(_location(store, path), patient) for path in files]
    if is_file:
        return _manifest(source, store, root, patient)
    raise ScreeningSourceError(f"{source}: no such folder or manifest")


def on_local_disk(source: str) -> bool:
    """Whether `source` is a path of this machine (not an object-store URL)."""
    return isinstance(_store(source)[0], LocalFileSystem)


def _store(location: str) -> tuple[AbstractFileSystem, str]:
    """The file system a location is on (fsspec's, as Dask's), and its path there."""
    try:
        store, path = url_to_fs(location)
    except (ImportError, ValueError) as error:  # an unknown protocol, its package missing
        raise ScreeningSourceError(f"{location}: cannot open it ({error})") from None
    return store, str(path)


def _location(store: AbstractFileSystem, path: str) -> str:
    """A path as a worker opens it: a plain path on the local disk, else the full URL."""
    return path if isinstance(store, LocalFileSystem) else store.unstrip_protocol(path)


def _manifest(
    source: str, store: AbstractFileSystem, path: str, patient: str | None
) -> list[ScreeningImage]:
    try:
        with store.open(path, "r", newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            columns = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ScreeningSourceError(f"{source}: cannot read the manifest ({error})") from None
    missing = [column for column in MANIFEST_COLUMNS if column not in columns]
    if not rows or missing:
        raise ScreeningSourceError(
            f"{source}: a manifest needs a header with {', '.join(MANIFEST_COLUMNS)} and a row "
            f"per image" + (f" (missing: {', '.join(missing)})" if missing else "")
        )
    images = []
    for number, row in enumerate(rows, start=2):
        image, whose = ((row.get(column) or "").strip() for column in MANIFEST_COLUMNS)
        if not image or not whose:
            raise ScreeningSourceError(f"{source}, row {number}: image and patient_id are required")
        if patient and whose != patient:
            continue
        extra = {column: (row.get(column) or "").strip() or None for column in OPTIONAL_COLUMNS}
        _check_lengths(f"{source}, row {number}", {"patient_id": whose, **extra})
        images.append(ScreeningImage(_beside(store, path, image), whose,
                                     extra["lesion_id"], extra["body_site"]))  # fmt: skip
    if not images:
        raise ScreeningSourceError(f"{source}: no rows of patient {patient}")
    return images


def _beside(store: AbstractFileSystem, manifest: str, image: str) -> str:
    """A manifest's image: a URL or an absolute path as it is, else relative to the
    manifest's folder."""
    if "://" in image:
        return image
    return _location(store, posixpath.join(posixpath.dirname(manifest), image))


def _check_lengths(where: str, values: dict[str, str | None]) -> None:
    for column, value in values.items():
        if value is not None and len(value) > FIELD_LIMITS[column]:
            raise ScreeningSourceError(
                f"{where}: {column} is {len(value)} characters, over {FIELD_LIMITS[column]}"
            )


def batches(images: Sequence[ScreeningImage], size: int) -> list[list[ScreeningImage]]:
    """Consecutive batches of `size`: a task per batch, never one per image (a run of tens
    of thousands of task runs would slow the orchestrator down)."""
    return [list(images[start : start + size]) for start in range(0, len(images), size)]


def screening_model(platform: Platform, model_uri: str | None) -> ScreeningModel:
    """The registered version to score with: `models:/NAME@ALIAS` (default the champion)
    resolved once, so that every batch uses the same version even if the alias moves."""
    name = platform.workspace.model_name
    uri = model_uri or f"models:/{name}@{CHAMPION}"
    if not uri.startswith("models:/"):
        raise ScreeningSourceError(
            f"--model-uri {uri}: screen with a registered version (models:/NAME/VERSION or "
            "models:/NAME@ALIAS), so that the worklist and the log name it"
        )
    named, _, alias = uri.removeprefix("models:/").partition("@")
    if not alias:
        named, _, version = named.partition("/")
        if not version.isdigit():  # `latest` or a stage moves: a run must name what it used
            raise ScreeningSourceError(
                f"--model-uri {uri}: name a version number (models:/NAME/3) or an alias"
            )
        return ScreeningModel(f"models:/{named}/{version}", named, version)
    found = platform.models().aliased(alias) if named == name else None
    if found is None:
        raise NoModelToScreenWith(f"{uri}: no version has that alias (approve a champion first)")
    return ScreeningModel(found.uri, found.name, found.version)


_SERVED: dict[str, ServedModel] = {}


def served_model(platform: Platform, uri: str) -> ServedModel:
    """The model, loaded once per process (a Dask worker keeps it for its next batches) from
    the platform's registry (a remote worker inherits no MLflow settings from the caller)."""
    from usecases.serving import load_served_model

    if uri not in _SERVED:
        platform.tracking()
        _SERVED[uri] = load_served_model(uri)
    return _SERVED[uri]


def score_batch(
    platform: Platform, model: ScreeningModel, batch: Sequence[ScreeningImage], rules: IntakeRules
) -> BatchOutcome:
    """Score a batch's images not scored before by this version, refuse the unreadable and
    those registration would refuse, and write the results with their predictions at once."""
    from usecases.serving import predict_files

    refused: list[tuple[str, str]] = []
    readable: dict[tuple[str, str], tuple[ScreeningImage, bytes]] = {}
    for image in batch:
        if image.unreadable is not None:  # the caller could not read it to carry it
            refused.append((image.location, image.unreadable))
            continue
        try:
            content = image.content if image.content is not None else _read(image.location, rules)
            check_header(content, rules, colour=True)  # the model decodes it, once
        except _UNREADABLE as error:
            refused.append((image.location, _why(error)))
            continue
        key = hashlib.sha256(content).hexdigest(), image.patient_id
        readable.setdefault(key, (image, content))
    done = platform.screening_log().screened(model.uri, readable)
    twice = len(batch) - len(refused) - len(readable)  # one image under two file names
    pending = [image_and_bytes for key, image_and_bytes in readable.items() if key not in done]
    if not pending:
        return BatchOutcome(0, len(done) + twice, tuple(refused))
    served = served_model(platform, model.uri)
    # Named by their place in `pending`: the same file may stand for two patients.
    answered, unreadable = predict_files(
        served, [(str(place), content) for place, (_, content) in enumerate(pending)]
    )
    refused += [(pending[int(r.image_name)][0].location, r.reason) for r in unreadable]
    at = utc_now()
    results = [_result(model, pending[int(str(answer.image_name))][0], answer, at)
               for answer in answered]  # fmt: skip
    written = platform.screening_log().record_batch(results)
    return BatchOutcome(written, len(done) + twice + len(results) - written, tuple(refused))


def carried(batch: Sequence[ScreeningImage], rules: IntakeRules) -> list[ScreeningImage]:
    """The batch with each image's bytes read here, for workers that cannot read the
    caller's disk; an image that cannot be read carries the reason instead."""
    loaded = []
    for image in batch:
        try:
            loaded.append(replace(image, content=_read(image.location, rules)))
        except _UNREADABLE as error:
            loaded.append(replace(image, unreadable=_why(error)))
    return loaded


def _read(location: str, rules: IntakeRules) -> bytes:
    """A file's bytes from wherever it is (the local disk, an object store), refused
    unread when it is over the intake's size."""
    store, path = _store(location)
    size = store.size(path)
    if size is not None and size > rules.max_file_bytes:
        raise RejectedSubmission(
            "too-large", f"file of {size:,} bytes is over {rules.max_file_bytes:,}"
        )
    content: bytes = store.cat_file(path)
    return content


def _why(error: Exception) -> str:
    if isinstance(error, RejectedSubmission | ScreeningSourceError):
        return str(error)
    if isinstance(error, FileNotFoundError):  # an object store's names no strerror
        return "cannot read the file (no such file)"
    return f"cannot read the file ({getattr(error, 'strerror', None) or error})"


def _result(
    model: ScreeningModel, image: ScreeningImage, answer: Prediction, at: datetime
) -> ScreeningResult:
    return ScreeningResult(
        model_uri=model.uri, model_name=model.name, model_version=model.version,
        patient_id=image.patient_id, image_sha256=answer.image_sha256, image=image.location,
        probability=answer.probability, melanoma=answer.melanoma, threshold=answer.threshold,
        screened_at=at, lesion_id=image.lesion_id, body_site=image.body_site,
    )  # fmt: skip


def images_done(outcomes: Sequence[BatchOutcome]) -> int:
    """Images the finished batches dealt with: scored now, scored before, or refused."""
    return sum(o.scored + o.already_scored + len(o.refused) for o in outcomes)


def progress_counts(outcomes: Sequence[BatchOutcome]) -> str:
    """E.g. `640 scored now, 120 before, 8 not scored`."""
    scored = sum(o.scored for o in outcomes)
    before = sum(o.already_scored for o in outcomes)
    refused = sum(len(o.refused) for o in outcomes)
    return f"{scored:,} scored now, {before:,} before, {refused:,} not scored"


def progress_line(outcomes: Sequence[BatchOutcome], images: int, seconds: float) -> str:
    """How far a run has come, e.g. `batches 3: 768 of 10,015 images (640 scored now, 120
    before, 8 not scored), 41.2 images/s`."""
    scored = sum(o.scored for o in outcomes)
    rate = f", {scored / seconds:.1f} images/s" if seconds > 0 else ""
    return (f"batches {len(outcomes)}: {images_done(outcomes):,} of {images:,} images "
            f"({progress_counts(outcomes)}){rate}")  # fmt: skip


def screening_report(
    platform: Platform,
    model: ScreeningModel,
    images: Sequence[ScreeningImage],
    outcomes: Sequence[BatchOutcome],
    out: Path,
) -> ScreeningReport:
    """The worklist of the run's patients (every result of this version for them, this run's
    and earlier runs'), written as worklist.csv, worklist.json and worklist.html under `out`."""
    patients = tuple(dict.fromkeys(image.patient_id for image in images))
    results = platform.screening_log().results(model.uri, patients)
    scored = pd.DataFrame(
        [{"patient_id": r.patient_id, "image": r.image, "probability": r.probability,
          "melanoma": r.melanoma, "threshold": r.threshold, "model_version": r.model_version,
          "sha256": r.image_sha256, "lesion_id": r.lesion_id, "body_site": r.body_site}
         for r in results],
        columns=[c for c in WORKLIST_COLUMNS if c not in ("rank", "decision")] + ["melanoma"],
    )  # fmt: skip
    worklist = ranked_worklist(scored)
    refused = tuple(reason for outcome in outcomes for reason in outcome.refused)
    out.mkdir(parents=True, exist_ok=True)
    files = out / "worklist.csv", out / "worklist.json", out / "worklist.html"
    worklist.to_csv(files[0], index=False)
    files[1].write_text(json.dumps({
        "model": asdict(model), "worklist": worklist.to_dict("records"),
        "not_scored": [{"image": name, "reason": why} for name, why in refused],
    }, indent=2, default=str) + "\n")  # fmt: skip
    thumbnails = {row.sha256: _thumbnail(row.image, row.sha256) for row in worklist.itertuples()}
    page = worklist_page(worklist, thumbnails, refused, f"{model.name} version {model.version}")
    files[2].write_text(page)
    return ScreeningReport(
        model, len(images), sum(o.scored for o in outcomes),
        sum(o.already_scored for o in outcomes), refused, patients, *files, worklist=worklist,
    )  # fmt: skip


def _thumbnail(location: str, sha256: str) -> str | None:
    """The file's thumbnail, unless it no longer holds the image that was scored."""
    try:
        store, path = _store(location)
        content = store.cat_file(path)
    except (OSError, ScreeningSourceError):
        return None
    return thumbnail(content) if hashlib.sha256(content).hexdigest() == sha256 else None
