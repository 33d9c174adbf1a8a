"""The prediction log: every prediction a model made, as it was made (append-only), in the
label store's database, so that a histopathology label arriving later can be matched to it
by the image's content (`cme monitor`).

Logging takes no label write lock: a serving process never waits for a label import (on
PostgreSQL; SQLite has one writer at a time for the whole file)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, insert, select
from sqlalchemy.engine import Row

from pipelines.errors import BadInput
from registry.database import Repository
from registry.labels.orm import LabelEventRow, PredictionRow
from registry.labels.repository import current_labels_query

_TEXT_MAX = {"model_name": 256, "model_version": 32, "source": 16, "image_name": 255}
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class PredictionRecord:
    """One prediction of a model, logged as it was made (append-only), so a histopathology
    label that arrives later can be matched to it by the image's content."""

    image_sha256: str  # sha256 hex of the image bytes as received
    model_name: str
    model_version: str | None  # None: a model that is not a registered version
    probability: float
    melanoma: bool  # the decision at `threshold`
    threshold: float
    predicted_at: datetime  # aware UTC
    source: str  # "serve" or "cli"
    image_name: str | None = None  # file name or caller's id, when known
    prediction_id: int | None = None


@dataclass(frozen=True)
class MatchedPrediction:
    """A logged prediction beside the current label of the registered image it was made on."""

    prediction: PredictionRecord
    image_id: str
    lesion_id: str
    dx: str  # current diagnosis (latest label event)
    dx_type: str
    label_arrived_at: datetime  # when a label of a listed source first reached the registry
    confirmed_at: datetime  # confirmed_at of the current label event


class InvalidPrediction(BadInput, ValueError):
    """A prediction that cannot be logged as given (a bound of the log's columns)."""


class PredictionLogRepository(Repository):
    """The predictions' rows, and their matches with the label registry's current labels."""

    def record_predictions(self, records: Sequence[PredictionRecord]) -> int:
        """Append predictions to the log, all in one transaction; returns how many."""
        if not records:
            return 0
        for record in records:
            check_prediction(record)
        with self.database.writing() as connection:
            connection.execute(insert(PredictionRow), [prediction_values(r) for r in records])
        return len(records)

    def predictions(
        self, model_name: str, *, since: datetime | None = None
    ) -> list[PredictionRecord]:
        """The model's logged predictions (made at or after `since`), oldest first."""
        query = _of_model(select(PredictionRow), model_name, since)
        with self.database.reading() as connection:
            return [_prediction_record(row) for row in connection.execute(query)]

    def matched_predictions(
        self,
        model_name: str,
        *,
        sources: Sequence[str] | None = None,
        since: datetime | None = None,
    ) -> list[MatchedPrediction]:
        """The model's logged predictions of registered images, each beside the image's
        current label (of a source in `sources`), oldest first. A prediction of an image the
        registry does not hold (yet) is left out."""
        matched: list[MatchedPrediction] = []
        with self.database.reading() as connection:
            for row in connection.execute(_matched_query(model_name, sources, since)):
                if matched and matched[-1].prediction.prediction_id == row.prediction_id:
                    # The same content under two image ids (two concurrent imports can both
                    # pass the duplicate check): the first registered counts, as at intake.
                    continue
                matched.append(_matched_prediction(row))
        return matched


def _matched_query(
    model_name: str, sources: Sequence[str] | None, since: datetime | None
) -> Select[Any]:
    current = current_labels_query().subquery()
    # When a label of a listed source first reached the registry: a consensus label
    # registered before the prediction and a biopsy result after it is a later label.
    first = select(LabelEventRow.image_id, func.min(LabelEventRow.recorded_at).label("arrived_at"))
    if sources:
        first = first.where(LabelEventRow.dx_type.in_(list(sources)))
    arrival = first.group_by(LabelEventRow.image_id).subquery()
    query: Select[Any] = (
        select(
            *PredictionRow.__table__.columns,
            current.c.image_id,
            current.c.lesion_id,
            current.c.dx,
            current.c.dx_type,
            arrival.c.arrived_at.label("label_arrived_at"),
            current.c.confirmed_at,
        )
        .join(current, current.c.sha256 == PredictionRow.image_sha256)
        .join(arrival, arrival.c.image_id == current.c.image_id)
    )
    if sources:
        query = query.where(current.c.dx_type.in_(list(sources)))
    return _of_model(query, model_name, since).order_by(  # first registered first
        current.c.registered_at, current.c.image_id
    )


def _of_model(query: Select[Any], model_name: str, since: datetime | None) -> Select[Any]:
    """Only the model's predictions made at or after `since`, oldest first."""
    query = query.where(PredictionRow.model_name == model_name)
    if since is not None:
        query = query.where(PredictionRow.predicted_at >= since)
    return query.order_by(PredictionRow.predicted_at, PredictionRow.prediction_id)


def check_prediction(record: PredictionRecord) -> None:
    """The same bounds on every backend (SQLite would keep an overlong name as it is)."""
    sha256 = record.image_sha256
    if len(sha256) != 64 or not _HEX.issuperset(sha256):
        raise InvalidPrediction(
            f"a prediction's image_sha256 is 64 lowercase hex digits, not {sha256!r:.80}"
        )
    for name, longest in _TEXT_MAX.items():
        text_value: str | None = getattr(record, name)
        if text_value is not None and not 0 < len(text_value) <= longest:
            raise InvalidPrediction(f"a prediction's {name} has 1 to {longest} characters")
    for name in ("probability", "threshold"):
        number: float = getattr(record, name)
        if not 0 <= number <= 1:  # NaN too
            raise InvalidPrediction(f"a prediction's {name} lies in [0, 1], not {number}")


def prediction_values(record: PredictionRecord) -> dict[str, Any]:
    return {
        name: getattr(record, name)
        for name in PredictionRecord.__dataclass_fields__
        if name != "prediction_id"
    }


def _prediction_record(row: Row[Any]) -> PredictionRecord:
    return PredictionRecord(
        **{name: getattr(row, name) for name in PredictionRecord.__dataclass_fields__}
    )


def _matched_prediction(row: Row[Any]) -> MatchedPrediction:
    return MatchedPrediction(
        prediction=_prediction_record(row),
        image_id=row.image_id,
        lesion_id=row.lesion_id,
        dx=row.dx,
        dx_type=row.dx_type,
        label_arrived_at=row.label_arrived_at,
        confirmed_at=row.confirmed_at,
    )
