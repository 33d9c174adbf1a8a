"""The pre-screening results: which images of which patients a model has scored, and what it
said (append-only), in the label store's database beside the prediction log.

A batch's results and their predictions are written in one transaction, and a result is
unique per model, image content and patient: a batch retried on another Dask worker, a run
resumed after a kill and a repeated run all leave each image scored once and each
prediction logged once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, tuple_

from registry.database import Repository
from registry.labels.orm import PredictionRow, ScreeningRow
from registry.prediction_log import PredictionRecord, check_prediction, prediction_values

SCREEN_SOURCE = "screen"
_IN_CLAUSE = 400  # keys per IN (...) query: well under SQLite's bound-parameter limit


@dataclass(frozen=True)
class ScreeningResult:
    """One image of a patient as a model scored it in a pre-screening run."""

    model_uri: str  # the exact version scored with: models:/NAME/VERSION
    model_name: str
    model_version: str | None
    patient_id: str
    image_sha256: str
    image: str  # where it was read from (path or URL)
    probability: float
    melanoma: bool  # the decision at `threshold`
    threshold: float
    screened_at: datetime  # aware UTC
    lesion_id: str | None = None
    body_site: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.image_sha256, self.patient_id

    def prediction(self) -> PredictionRecord:
        return PredictionRecord(
            image_sha256=self.image_sha256,
            model_name=self.model_name,
            model_version=self.model_version,
            probability=self.probability,
            melanoma=self.melanoma,
            threshold=self.threshold,
            predicted_at=self.screened_at,
            source=SCREEN_SOURCE,
            image_name=self.image[-255:],
        )


_FIELDS = tuple(field.name for field in fields(ScreeningResult))


class ScreeningLogRepository(Repository):
    """The screening results' rows."""

    def screened(self, model_uri: str, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of `keys` (image sha256, patient id) the model has scored already."""
        wanted = list(dict.fromkeys(keys))
        found: set[tuple[str, str]] = set()
        with self.database.reading() as connection:
            for start in range(0, len(wanted), _IN_CLAUSE):
                found |= _screened(connection, model_uri, wanted[start : start + _IN_CLAUSE])
        return found

    def record_batch(self, results: Sequence[ScreeningResult]) -> int:
        """Write a finished batch: the results not written before, and a prediction in the
        prediction log for each of those, all in one transaction; returns how many were new."""
        if not results:
            return 0
        for result in results:
            check_prediction(result.prediction())
        with self.database.writing() as connection:
            done = _screened(connection, results[0].model_uri, [r.key for r in results])
            new = list({r.key: r for r in results if r.key not in done}.values())
            if new:
                connection.execute(insert(ScreeningRow), [_values(r) for r in new])
                predictions = [prediction_values(r.prediction()) for r in new]
                connection.execute(insert(PredictionRow), predictions)
        return len(new)

    def results(self, model_uri: str, patients: Sequence[str]) -> list[ScreeningResult]:
        """The model's results for these patients, highest probability first."""
        query = (
            select(ScreeningRow)
            .where(ScreeningRow.model_uri == model_uri, ScreeningRow.patient_id.in_(patients))
            .order_by(ScreeningRow.probability.desc(), ScreeningRow.screening_id)
        )
        with self.database.reading() as connection:
            return [_result(row) for row in connection.execute(query)]


def _screened(
    connection: Connection, model_uri: str, keys: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    if not keys:
        return set()
    pair = tuple_(ScreeningRow.image_sha256, ScreeningRow.patient_id)
    query = select(ScreeningRow.image_sha256, ScreeningRow.patient_id).where(
        ScreeningRow.model_uri == model_uri, pair.in_(keys)
    )
    return {(row.image_sha256, row.patient_id) for row in connection.execute(query)}


def _values(result: ScreeningResult) -> dict[str, Any]:
    return {
        "model_uri": result.model_uri,
        "model_name": result.model_name,
        "model_version": result.model_version,
        "patient_id": result.patient_id,
        "image_sha256": result.image_sha256,
        "image": result.image[-1024:],
        "lesion_id": result.lesion_id,
        "body_site": result.body_site,
        "probability": result.probability,
        "melanoma": result.melanoma,
        "threshold": result.threshold,
        "screened_at": result.screened_at,
    }


def _result(row: Any) -> ScreeningResult:
    return ScreeningResult(**{name: getattr(row, name) for name in _FIELDS})
